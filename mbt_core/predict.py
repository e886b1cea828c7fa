"""`mbt predict`: a checkpoint and a video file to named top-k classes and a report of where the model looked.

The checkpoint is an official Scenic MBT file (msgpack or npz, `checkpoints.load_scenic`: the geometry comes
from the parameter shapes, `model.fusion_layer=...` and other fields from `overrides`) or an mbt run directory
(its config, latest or best parameters, data card and spectrogram statistics). The clip is tokenised at the
checkpoint's own geometry into the paper's test views (Sec. 4.2: 4 views for official checkpoints, the run's
`train.eval_views` for a run), and the attention is read on the centred window. Class names come from
`labels` files, else from the run's data card, else from the shipped card whose class count matches the model
(527 AudioSet, 309 VGGSound, 97 + 300 EPIC), else they are `class <i>`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from mbt_core.analysis.attention_maps import fusion_share
from mbt_core.analysis.clip_prediction import ClipPrediction, format_prediction, predict_views
from mbt_core.analysis.overlay import clip_attention, rollout_on_grids
from mbt_core.analysis.prediction_report import report_html, write_report
from mbt_core.atomic_files import write_text
from mbt_core.config import MBTConfig
from mbt_core.data.tokenise import Preprocess, View, tokenise, views
from mbt_core.datasets.cards import read_card
from mbt_core.datasets.class_names import (SINGLE_HEAD, ClassList, head_sizes, matching_card, names_from_card,
                                           names_from_files)
from mbt_core.model.checkpoints import load_scenic
from mbt_core.recipes import TrainConfig
from mbt_core.run_dir import CONFIG

REPORT, PREDICTION = "report.html", "prediction.json"  # what `out` receives


@dataclasses.dataclass
class Checkpoint:
    """A model ready to predict: config, parameters, how clips are tokenised, the run's card (if any)."""

    config: MBTConfig
    params: Any
    preprocess: Preprocess
    views: int  # test views per clip
    card: dict | None  # the run's data card
    source: str  # where the parameters came from, in words


@dataclasses.dataclass
class Outcome:
    """What `predict` made: the prediction, its text tables, and the report's path (None without `out`)."""

    prediction: ClipPrediction
    text: str
    report: Path | None
    attention: dict[str, list]  # aux["attention"] of the centred window
    view: View  # the centred window


def load_checkpoint(checkpoint: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
                    which: str = "latest") -> Checkpoint:
    """An official checkpoint file or an mbt run directory (its latest or best parameters), ready to predict."""
    from mbt_core.experiment import load_params  # training-side imports only when a run directory is given

    path, overrides = Path(checkpoint), dict(overrides or {})
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path}: does not exist (an official .npz / msgpack file or a run directory)")
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise ValueError(f"checkpoint {path}: a directory without {CONFIG}, so not an mbt run directory")
        run, params = load_params(path, which)
        config = run.model.replace(**overrides) if overrides else run.model
        card_file = (Path(run.data.dir) / run.data.card).resolve() if run.data.dir else None
        card = read_card(card_file) if card_file and card_file.is_file() else None
        preprocess = Preprocess()
        if run.data.normalise_spec:
            stats = (card or {}).get("spectrogram") or {}
            if stats.get("mean") is None:
                raise ValueError(f"run {path} standardises log-mel with its data card's statistics, but "
                                 f"{card_file} has none (or is missing)")
            preprocess = Preprocess(spec_mean=float(stats["mean"]), spec_std=float(stats["std"]))
        return Checkpoint(config, params, preprocess, run.train.eval_views, card, f"run directory {path} ({which})")
    config, params = load_scenic(path, **overrides)
    return Checkpoint(config, params, Preprocess(), TrainConfig().eval_views, None, f"official checkpoint {path}")


def class_lists(checkpoint: Checkpoint, labels: Sequence[str | os.PathLike] = ()) -> tuple[dict[str, ClassList], list[str]]:
    """Each head's class names and label type: from `labels` files, the run's card, a matching shipped card, or
    `class <i>`; and notes saying which."""
    sizes = head_sizes(checkpoint.config.heads, checkpoint.config.num_classes)
    if labels:
        lists = names_from_files(labels, sizes)
    elif checkpoint.card is not None:
        lists = names_from_card(checkpoint.card, sizes)
    elif (card := matching_card(sizes)) is not None:
        lists = {h: dataclasses.replace(c, source=f"{c.source}, whose class count matches the model's")
                 for h, c in names_from_card(card, sizes).items()}
    else:
        lists = {h: ClassList([f"class {i}" for i in range(n)], None, "no labels given") for h, n in sizes.items()}
    notes = [f"class names{'' if h == SINGLE_HEAD else f' ({h})'}: {c.source}" for h, c in lists.items()]
    for head, found in lists.items():
        if found.label_type is None:
            notes.append(f"scores{'' if head == SINGLE_HEAD else f' ({head})'}: sigmoid per class (multi-label); "
                         f"the labels do not say whether classes exclude each other")
    return lists, notes


def predict(checkpoint: str | os.PathLike | Checkpoint, video: str | os.PathLike, top_k: int = 5,
            out: str | os.PathLike | None = None, labels: Sequence[str | os.PathLike] = (),
            overrides: Mapping[str, Any] | None = None, num_views: int | None = None) -> Outcome:
    """Predict one clip: named top-k per readout; with `out`, the self-contained `out/report.html` and the top-k
    tables as `out/prediction.json`."""
    model = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, overrides)
    if not Path(video).is_file():
        raise FileNotFoundError(f"video {video}: " + ("not a file" if Path(video).exists() else "does not exist"))
    lists, notes = class_lists(model, labels)
    config = model.config
    test_views = views(video, config, num_views or model.views, preprocess=model.preprocess)
    label_types = {h: c.label_type or "multi_label" for h, c in lists.items()}
    prediction = predict_views(config, model.params, test_views, {h: c.names for h, c in lists.items()},
                               label_types, top_k, notes)
    centred = tokenise(video, config, preprocess=model.preprocess)
    example = {"rgb": centred.frames, "spec": centred.spectrogram}
    example = {m: example[m] for m in prediction.modalities}
    attention = clip_attention(config, model.params, example)
    report = None
    if out is not None:
        rollout = rollout_on_grids(config, attention, example)
        facts = {"clip": str(video), "checkpoint": model.source,
                 "model": model_summary(config),
                 "test views": ", ".join(f"[{a:.2f}, {b:.2f}) s" for a, b in prediction.windows),
                 "attention window": f"[{centred.start:.2f}, {centred.end:.2f}) s (centred)"}
        page = report_html(prediction, centred, rollout, fusion_share(attention, config), config.fused_layers.start,
                           facts)
        report = write_report(Path(out) / REPORT, page)
        write_text(Path(out) / PREDICTION, json.dumps(prediction.to_dict(), indent=2))
    return Outcome(prediction, format_prediction(prediction), report, attention, centred)


def model_summary(config: MBTConfig) -> str:
    """The model in one line: fusion, L_f, B, depth and width."""
    if not config.fused_layers:
        fusion = "late fusion (no fused layer)"
    else:
        fusion = f"{config.fusion.replace('_', ' ')} fusion from layer {config.fused_layers.start + 1}"
        fusion += f", B = {config.num_bottlenecks}" if config.fusion == "bottleneck" else ""
    return f"{fusion}; {config.num_layers} layers of width {config.hidden_size}, modalities {', '.join(config.modalities)}"


def run_clip(run_dir: str | os.PathLike, split: str = "test", index: int = 0) -> Path:
    """The file of clip `index` of a run's split (the notebooks' default clip)."""
    from mbt_core.data.pipeline import load_dataset
    from mbt_core.run_dir import read_config

    dataset = load_dataset(read_config(run_dir).data)
    if split not in dataset.splits or not 0 <= index < len(dataset.splits[split]):
        raise ValueError(f"{dataset.root}: no clip {index} in split {split!r}")
    return Path(dataset.splits[split][index].path)


def with_relative_paths(text: str, start: str | os.PathLike = ".") -> str:
    """`text` with every absolute path of an existing file or folder written relative to `start`: what a
    page shows names no folder of the machine that made it."""
    def relative(match: re.Match) -> str:
        path = match.group(0)
        return os.path.relpath(path, start) if os.path.exists(path) else path

    return re.sub(r"(?<![\w.])/[^\s,;()'\"]+", relative, text)

