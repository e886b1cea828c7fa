"""Training recipes: a run's whole configuration (model, training, data) as plain data, presets by name.

`RunConfig` is three frozen dataclasses; `load_run_config("synthetic-tiny", ["model.fusion_layer=4"])`
resolves a recipe name or a JSON file plus dotted overrides, and `to_dict()` writes `config.json`.
"""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

from mbt_core.config import PRESETS, MBTConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and augmentation (Sec. 4.2: SGD+momentum, cosine schedule, mixup, SpecAugment)."""

    steps: int = 1000
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum, the paper) or "adamw" (small from-scratch recipes).
    learning_rate: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float = 2.5  # Linear warmup, then cosine decay to zero.
    grad_clip_norm: float | None = 1.0
    loss: str = "per_modality"  # Each modality's logits get their own loss (official); or "mean_logits".
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.3  # 0 disables mixup.
    modality_mixup: bool = True
    spec_augment: bool = True
    frame_augment: bool = True  # Random crop with scale jitter, flip, colour jitter.
    compute_dtype: str = "float32"  # "bfloat16" on TPUs.
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # Steps between validation runs (0: only at the end).
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    init_checkpoint: str | None = None  # An ImageNet-21K ViT .npz.
    init_fusion_from_posemb: bool = False  # The official fusion-token initialisation.
    eval_views: int = 4


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the clips are and how they become tokens."""

    dir: str = ""
    manifest: str = "manifest.csv"
    card: str = "data_card.md"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    cache: bool = True  # Pre-tokenise each split once into shards keyed by the preprocessing config.
    workers: int = 0  # grain worker processes (0: in the main process).
    on_error: str = "raise"  # A corrupt clip stops tokenisation ("raise") or is left out and reported ("skip").
    normalise_spec: bool = False  # Standardise log-mel with the card's statistics (`mbt tokenise --stats`).


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: model, training and data configuration."""

    model: MBTConfig
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict (what `config.json` holds)."""
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train),
                "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Inverse of `to_dict`; unknown keys raise a ValueError naming them."""
        unknown = set(d) - {"model", "train", "data"}
        if unknown:
            raise ValueError(f"run config: unknown section(s) {sorted(unknown)}")
        for section, kind in (("train", TrainConfig), ("data", DataConfig)):
            _check_fields(kind, d.get(section, {}), section)
        _check_fields(MBTConfig, d["model"], "model")
        return cls(MBTConfig.from_dict(d["model"]), TrainConfig(**d.get("train", {})), DataConfig(**d.get("data", {})))


def _check_fields(kind, values: dict, section: str) -> None:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"run config: {section} has no field(s) {sorted(unknown)}; known: {sorted(names)}")


_PAPER_TRAIN = dict(steps=50_000, batch_size=64, optimizer="sgd", learning_rate=0.5, momentum=0.9,
                    warmup_epochs=2.5, grad_clip_norm=1.0, mixup_alpha=0.3, modality_mixup=True,
                    spec_augment=True, frame_augment=True)

RECIPES: dict[str, dict[str, Any]] = {
    # The paper's recipe (Sec. 4.2) on the paper's model; stochastic depth 0.3.
    "paper": {"model": {"preset": "paper-b16", "stochastic_depth": 0.3}, "train": _PAPER_TRAIN},
    # From-scratch CPU recipe on the synthetic benchmark: a few minutes on 2 cores. No modality mixup,
    # which blurs the pairing classes; AdamW because nothing is pre-trained.
    "synthetic-tiny": {
        "model": {"preset": "tiny", "fusion_layer": 1, "num_bottlenecks": 4},
        "train": dict(steps=400, batch_size=32, optimizer="adamw", learning_rate=1e-3, weight_decay=1e-4,
                      warmup_epochs=1.0, grad_clip_norm=1.0, mixup_alpha=0.0, modality_mixup=False,
                      spec_augment=False, frame_augment=False, log_every=10, eval_every=0,
                      checkpoint_every=100, eval_views=1),
    },
}


def parse_value(text: str) -> Any:
    """A command-line value: a Python literal where it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `section.key=value` overrides into a nested dict (a copy)."""
    tree = json.loads(json.dumps(tree))
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2 or parts[0] not in ("model", "train", "data"):
            raise ValueError(f"override {item!r}: expected section.key=value with section model, train or data")
        tree.setdefault(parts[0], {})[parts[1]] = parse_value(value)
    return tree


def _resolve(tree: dict[str, Any]) -> RunConfig:
    model = dict(tree.get("model", {}))
    preset = model.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"run config: unknown model preset {preset!r}; known: {sorted(PRESETS)}")
        model = {**MBTConfig.preset(preset).to_dict(), **model}
    return RunConfig.from_dict({**tree, "model": model})


def load_run_config(name_or_file: str, overrides: list[str] = ()) -> RunConfig:
    """A recipe name (see `RECIPES`) or a JSON file (e.g. a run's config.json), plus dotted overrides."""
    if name_or_file in RECIPES:
        tree = RECIPES[name_or_file]
    elif Path(name_or_file).is_file():
        tree = json.loads(Path(name_or_file).read_text())
    else:
        raise ValueError(f"--config {name_or_file!r}: neither a recipe ({sorted(RECIPES)}) nor a file")
    return _resolve(apply_overrides(tree, list(overrides)))
