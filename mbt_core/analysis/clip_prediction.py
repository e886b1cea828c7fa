"""One clip's prediction (Sec. 4.2, "Inference"): scores averaged over its test views, for the fused model and
for each modality's own readout, with the top-k classes by name.

The fused score is the model's output; a modality's readout is its own CLS token (`gap`: its mean token) through
the shared classifier, `aux["per_modality"]`: the fused output of a `token` model is their mean. With fusion these
tokens have seen the other modality (through the bottlenecks), so a readout is "what the audio / visual tokens
say", not a unimodal model's answer. A clip without an audio track is read from its frames alone: the model runs
on the RGB input only (unimodally), the audio readout is absent and the fused prediction is the visual one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbt_core.config import MBTConfig
from mbt_core.data.tokenise import View
from mbt_core.model.model import MBT

FUSED = "fused"
READOUT_NAMES = {FUSED: "fused model", "spec": "audio only (spectrogram readout)", "rgb": "visual only (RGB readout)"}


@dataclasses.dataclass
class ClipPrediction:
    """Scores of one clip per readout (`fused`, then each modality read) and head, the class names and notes."""

    scores: dict[str, dict[str, np.ndarray]]  # readout -> head -> (classes,) scores
    classes: dict[str, list[str]]  # head -> names in column order
    label_types: dict[str, str]  # head -> multi_label (sigmoid per class) or single_label (softmax)
    top_k: int
    modalities: tuple[str, ...]  # the modalities the model read
    missing: tuple[str, ...]  # the model's modalities the clip lacks (no audio track)
    windows: list[tuple[float, float]]  # the test views' [start, end) in seconds
    notes: list[str] = dataclasses.field(default_factory=list)

    def top(self, readout: str, head: str) -> list[tuple[int, str, float]]:
        """The top-k (class index, name, score) of one readout and head, best first (ties: lower index first)."""
        scores = self.scores[readout][head]
        order = np.argsort(-scores, kind="stable")[:self.top_k]
        return [(int(i), self.classes[head][i], float(scores[i])) for i in order]

    def to_dict(self) -> dict[str, Any]:
        """The top-k tables and notes as plain JSON-able data."""
        return {"top": {r: {h: [{"index": i, "class": n, "score": s} for i, n, s in self.top(r, h)]
                            for h in self.scores[r]} for r in self.scores},
                "label_types": self.label_types, "modalities": list(self.modalities), "missing": list(self.missing),
                "windows": [list(w) for w in self.windows], "notes": self.notes}


def readout_name(readout: str) -> str:
    """What a readout is, in words."""
    return READOUT_NAMES.get(readout, f"{readout} only ({readout} readout)")


def view_inputs(views: Sequence[View], config: MBTConfig) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The model inputs of a clip's views (batched over views) and the modalities the clip lacks."""
    missing = tuple(m for m in config.modalities if m == "spec" and views[0].audio_missing)
    present = [m for m in config.modalities if m not in missing]
    if not present:
        raise ValueError(f"{views[0].path}: the clip has no audio track and the model reads only {config.modalities}")
    unknown = [m for m in present if m not in ("rgb", "spec")]
    if unknown:
        raise ValueError(f"modalities {unknown}: a video file gives only rgb and spec inputs")
    field = {"rgb": "frames", "spec": "spectrogram"}
    return {m: np.stack([getattr(v, field[m]) for v in views]).astype(np.float32) for m in present}, missing


def scores_of(logits: np.ndarray, label_type: str) -> np.ndarray:
    """Probabilities of one head: sigmoid per class (multi-label) or softmax over classes (single label)."""
    logits = jnp.asarray(logits, jnp.float32)
    return np.asarray(jax.nn.sigmoid(logits) if label_type == "multi_label" else jax.nn.softmax(logits, axis=-1))


def predict_views(config: MBTConfig, params: Any, views: Sequence[View], classes: Mapping[str, list[str]],
                  label_types: Mapping[str, str], top_k: int = 5, notes: Sequence[str] = ()) -> ClipPrediction:
    """Scores of one clip from its test views: logits averaged over views (Sec. 4.2), then sigmoid or softmax."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    inputs, missing = view_inputs(views, config)
    logits, aux = MBT(config).apply({"params": params}, inputs, train=False)
    readouts = {FUSED: logits, **aux["per_modality"]}
    scores = {}
    for readout, value in readouts.items():
        per_head = value if isinstance(value, dict) else {next(iter(classes)): value}
        scores[readout] = {h: scores_of(np.asarray(v).mean(axis=0), label_types[h]) for h, v in per_head.items()}
    notes = list(notes)
    if any(v.padded for v in views):
        notes.append(f"{views[0].path}: part of the test windows ({config.spec_seconds:g} s each) lies outside the clip "
                     f"or its streams: padded (silent audio, frames held)")
    if missing:
        notes.append(f"{views[0].path}: no audio track; predicted from the frames alone (the model ran on the RGB "
                     f"input only): there is no audio readout, and the fused prediction is the visual one")
    return ClipPrediction(scores, {h: list(v) for h, v in classes.items()}, dict(label_types), top_k,
                          tuple(inputs), missing, [(v.start, v.end) for v in views], notes)


def format_prediction(prediction: ClipPrediction) -> str:
    """The top-k tables as text: one per readout and head, rank, score and class name."""
    lines = [*(f"note: {n}" for n in prediction.notes)]
    for readout in prediction.scores:
        for head in prediction.scores[readout]:
            title = readout_name(readout) + (f", {head}" if len(prediction.classes) > 1 else "")
            kind = "sigmoid" if prediction.label_types[head] == "multi_label" else "softmax"
            lines.append(f"{title} (top {min(prediction.top_k, len(prediction.classes[head]))}, {kind} scores):")
            lines += [f"  {rank}. {score:.4f}  {name}" for rank, (_, name, score)
                      in enumerate(prediction.top(readout, head), 1)]
    for m in prediction.missing:
        lines.append(f"{readout_name(m)}: absent (the clip has no audio track)")
    return "\n".join(lines)
