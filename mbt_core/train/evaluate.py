"""Evaluation (Sec. 4.2, "Inference"): logits averaged over N temporal views per clip, then metrics.

`evaluation_report` gives what `eval.json` holds: mAP with per-class AP and positive rates (AP's
chance level is the positive rate, not 0.5), excluded classes, mean AUC and d-prime (multi-label) or
top-1/top-5 (single label), per modality as well, and the mean AP per class kind where the card has kinds.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mbt_core.config import MBTConfig
from mbt_core.data.cache import CachedSplit
from mbt_core.model.model import MBT
from mbt_core.train import metrics


def predict(config: MBTConfig, params: Any, split: CachedSplit, batch_size: int = 64,
            modalities: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """View-averaged logits per clip: `"fused"` (the model's output) and one entry per modality."""
    modalities = modalities or config.modalities
    model = MBT(config)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    views = split.frames.shape[1]
    out: dict[str, list[np.ndarray]] = {}
    for begin in range(0, len(split), batch_size):
        idx = range(begin, min(begin + batch_size, len(split)))
        # The last batch is padded with its last clip to the full size: one compiled shape for every batch.
        padded = [*idx, *[idx[-1]] * (min(batch_size, len(split)) - len(idx))]
        total: dict[str, Any] = {}
        for v in range(views):
            examples = [split.example(i, v) for i in padded]
            inputs = {m: jnp.asarray(np.stack([e[m] for e in examples])) for m in modalities}
            logits, aux = forward(params, inputs)
            got = {"fused": logits, **aux["per_modality"]}
            total = {k: total.get(k, 0) + np.asarray(x)[:len(idx)] / views for k, x in got.items()}
        for key, value in total.items():
            out.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in out.items()}


def scores_from_logits(logits: np.ndarray, label_type: str) -> np.ndarray:
    """Probabilities: sigmoid per class (multi-label) or softmax over classes (single label)."""
    if label_type == "multi_label":
        return np.asarray(jax.nn.sigmoid(logits))
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def _ap_table(scores: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, Any]:
    report = metrics.map_report(scores, targets)
    ap = report["ap"]
    excluded = [classes[i] for i in report["excluded"]]
    return {"mAP": float(report["mAP"]),
            "per_class_ap": {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, ap)},
            "positive_rate": {c: float(r) for c, r in zip(classes, report["positive_rate"])},
            "excluded_classes": excluded, "mean_auc": float(report["mean_auc"]), "d_prime": float(report["d_prime"])}


def evaluation_report(logits: Mapping[str, np.ndarray], targets: np.ndarray, classes: list[str],
                      label_type: str, kinds: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The contents of `eval.json` for view-averaged logits of the fused model and of each modality."""
    result: dict[str, Any] = {}
    for key, value in logits.items():
        scores = scores_from_logits(value, label_type)
        part = _ap_table(scores, targets, classes)
        if label_type == "single_label":
            labels = targets.argmax(-1)
            part["top1"] = metrics.top_k_accuracy(scores, labels, k=1)
            part["top5"] = metrics.top_k_accuracy(scores, labels, k=min(5, len(classes)))
        if kinds:
            by_kind: dict[str, list[float]] = {}
            for name, ap in part["per_class_ap"].items():
                if ap is not None and name in kinds:
                    by_kind.setdefault(kinds[name], []).append(ap)
            part["mAP_by_kind"] = {k: float(np.mean(v)) for k, v in by_kind.items()}
            rates: dict[str, list[float]] = {}
            for name, rate in part["positive_rate"].items():
                if name in kinds:
                    rates.setdefault(kinds[name], []).append(rate)
            part["positive_rate_by_kind"] = {k: float(np.mean(v)) for k, v in rates.items()}
        if key == "fused":
            result.update(part)
        else:
            result.setdefault("per_modality", {})[key] = part
    result["num_clips"] = int(len(targets))
    return result
