"""Training recipes: a run's whole configuration (model, training, data) as plain data, presets by name.

`RunConfig` is three frozen dataclasses; `load_run_config("synthetic-tiny", ["model.fusion_layer=4"])`
resolves a recipe name or a JSON file plus dotted overrides, and `to_dict()` is what `config.json` holds.
Text becomes configuration only here, once: each override and each JSON value is checked against its
dataclass field's type (`field_value`), so a wrong type names the key, the type and the value before any
work starts. Code changes a config with `RunConfig.replace` / `dataclasses.replace`, never through text.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

from mbt_core.config import PRESETS, MBTConfig


OPTIMIZERS = ("sgd", "adamw")
LOSSES = ("per_modality", "mean_logits")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
ON_ERROR = ("raise", "skip")


def _at_least(config: Any, section: str, low: int, *names: str) -> None:
    for name in names:
        if getattr(config, name) < low:
            raise ValueError(f"{section}.{name}: must be >= {low}, got {getattr(config, name)}")


def _one_of(config: Any, section: str, **choices: Sequence[str]) -> None:
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{section}.{name}: {getattr(config, name)!r} is not one of {allowed}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and augmentation (Sec. 4.2: SGD+momentum, cosine schedule, mixup, SpecAugment)."""

    steps: int = 1000
    epochs: float | None = None  # When set, `steps` is resolved from it: ceil(epochs x steps of one epoch).
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
    # The one training augmentation (Sec. 4.2), `augment.augment_example`; defaults of the official config.
    frame_augment: bool = True  # Random crop with scale jitter, flip, colour jitter (the fields below).
    crop_scale: tuple[float, float] = (0.9, 1.33)  # Scale jitter of the crop's height and width.
    flip: float = 0.5  # Probability of a left-right flip.
    color_jitter: float = 0.8  # Probability of colour jitter (brightness, saturation, contrast, hue).
    color_drop: float = 0.1  # Probability of greyscale.
    spec_augment: bool = True  # SpecAugment, AST style; masks hold the mean (0 once standardised).
    spec_time_masks: int = 1
    spec_max_time: int = 192
    spec_freq_masks: int = 1
    spec_max_freq: int = 48
    compute_dtype: str = "float32"  # "bfloat16" on TPUs.
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # Steps between validation runs, and at the end (0: no validation, no `best/`).
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    init_checkpoint: str | None = None  # An ImageNet-21K ViT .npz.
    init_fusion_from_posemb: bool = False  # The official fusion-token initialisation.
    eval_views: int = 4

    def __post_init__(self):
        _at_least(self, "train", 1, "steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                  "eval_views")
        _at_least(self, "train", 0, "learning_rate", "weight_decay", "warmup_epochs", "mixup_alpha", "eval_every")
        _one_of(self, "train", optimizer=OPTIMIZERS, loss=LOSSES, compute_dtype=COMPUTE_DTYPES)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"train.momentum: must lie in [0, 1), got {self.momentum}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing: must lie in [0, 1), got {self.label_smoothing}")
        _at_least(self, "train", 0, "spec_time_masks", "spec_max_time", "spec_freq_masks", "spec_max_freq")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"train.epochs: must be > 0 or None (train.steps counts), got {self.epochs}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"train.crop_scale: must be (low, high) with 0 < low <= high, got {self.crop_scale}")
        for name in ("flip", "color_jitter", "color_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"train.{name}: a probability must lie in [0, 1], got {getattr(self, name)}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"train.grad_clip_norm: must be > 0 or None (no clipping), got {self.grad_clip_norm}")


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
    train_windows: int = 3  # Candidate t-second windows cached per training clip, first to last (Sec. 4.2).
    synchronous: bool = True  # One window for both modalities; False: each draws its own (Sec. 4.3.2).

    def __post_init__(self):
        _at_least(self, "data", 0, "workers")
        _at_least(self, "data", 1, "train_windows")
        _one_of(self, "data", on_error=ON_ERROR)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: model, training and data configuration."""

    model: MBTConfig
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()

    def replace(self, *, model: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                data: Mapping[str, Any] | None = None) -> "RunConfig":
        """A copy with fields of each section changed (`dataclasses.replace`, validated again)."""
        return RunConfig(self.model.replace(**(model or {})), dataclasses.replace(self.train, **(train or {})),
                         dataclasses.replace(self.data, **(data or {})))

    def resolve_epochs(self, steps_per_epoch: int) -> "RunConfig":
        """The run with `train.steps` = ceil(train.epochs x steps_per_epoch) when it counts epochs; else itself."""
        if self.train.epochs is None:
            return self
        return self.replace(train={"steps": max(1, math.ceil(self.train.epochs * steps_per_epoch))})

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
        if "model" not in d:
            raise ValueError("run config: no model section")
        checked = {s: {k: field_value(s, k, v) for k, v in _known(s, d.get(s, {})).items()} for s in SECTIONS}
        return cls(MBTConfig.from_dict(checked["model"]), TrainConfig(**checked["train"]), DataConfig(**checked["data"]))


SECTIONS = {"model": MBTConfig, "train": TrainConfig, "data": DataConfig}


def _known(section: str, values: Mapping[str, Any]) -> Mapping[str, Any]:
    """`values`, after checking that each key is a field of the section."""
    names = {f.name for f in dataclasses.fields(SECTIONS[section])}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"run config: {section} has no field(s) {sorted(unknown)}; known: {sorted(names)}")
    return values


_PAPER_TRAIN = dict(epochs=50.0, batch_size=64, optimizer="sgd", learning_rate=0.5, momentum=0.9,
                    warmup_epochs=2.5, grad_clip_norm=1.0, mixup_alpha=0.3, modality_mixup=True,
                    spec_augment=True, frame_augment=True)

RECIPES: dict[str, dict[str, Any]] = {
    # The paper's recipe (Sec. 4.2) on the paper's model; stochastic depth 0.3.
    # 50 epochs, resolved to steps from the training split's size; log-mel standardised with the training
    # split's statistics (`mbt tokenise --stats`); 10 s clips: 3 windows of 8 s, one frame stride (1 s) apart.
    "paper": {"model": {"preset": "paper-b16", "stochastic_depth": 0.3}, "train": _PAPER_TRAIN,
              "data": {"normalise_spec": True, "train_windows": 3}},
    # From-scratch CPU recipe on the synthetic benchmark: a few minutes on 2 cores. No modality mixup,
    # which blurs the pairing classes; AdamW because nothing is pre-trained.
    "synthetic-tiny": {
        "model": {"preset": "tiny-48", "fusion_layer": 1, "num_bottlenecks": 4},
        "train": dict(steps=400, batch_size=32, optimizer="adamw", learning_rate=1e-3, weight_decay=1e-4,
                      warmup_epochs=1.0, grad_clip_norm=1.0, mixup_alpha=0.0, modality_mixup=False,
                      spec_augment=False, frame_augment=False, log_every=10, eval_every=0,
                      checkpoint_every=100, eval_views=1),
        "data": {"train_windows": 1},  # 4 s clips, 4 s windows: one window is the whole clip
    },
}


_TEXT = object()  # marks a value still in its command-line form


@functools.lru_cache(maxsize=None)
def _field_types(section: str) -> dict[str, Any]:
    return typing.get_type_hints(SECTIONS[section])


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "an int or a {head: classes} mapping"
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _TEXT


def _typed(hint: Any, value: Any, text: str | None) -> Any:
    """`value` as a `hint` (from a JSON value, or from command-line `text` when given); raise TypeError if it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if (text is not None and text.strip() in ("None", "null")) or (text is None and value is None):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _typed(inner[0], value, text) if len(inner) == 1 else value
    if text is not None:
        value = _literal(text)
        if hint is str:
            return value if isinstance(value, str) else text  # a path or name stays text: `2024` is a folder
        if hint is bool and text.strip() in ("true", "false"):
            return text.strip() == "true"
        if value is _TEXT:
            raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        value = list(value.items()) if isinstance(value, Mapping) else value  # video_channels: {"flow": 2}
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_typed(args[0], v, None) for v in value)
            if len(value) == len(args):
                return tuple(_typed(a, v, None) for a, v in zip(args, value))
    elif hint is Any:  # num_classes: an int, or head name -> classes
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, Mapping) and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            return dict(value)
        if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            return {str(k): _typed(int, v, None) for k, v in value}
    raise TypeError


def field_value(section: str, name: str, value: Any, text: str | None = None) -> Any:
    """The value of `section.name` checked against the field's type; `text` (a command-line value) is parsed by it."""
    if section == "model" and name == "preset":  # a recipe's model preset name
        hint = str
    else:
        _known(section, {name: value})
        hint = _field_types(section)[name]
    try:
        return _typed(hint, value, text)
    except TypeError:
        shown = text if text is not None else repr(value)
        raise ValueError(f"{section}.{name}: expected {_type_name(hint)}, got {shown}") from None


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value` as (section, key, value typed by the field); a bad key or value raises a ValueError."""
    key, sep, text = item.partition("=")
    parts = key.split(".")
    if not sep or len(parts) != 2 or parts[0] not in SECTIONS:
        raise ValueError(f"override {item!r}: expected section.key=value with section model, train or data")
    return parts[0], parts[1], field_value(parts[0], parts[1], None, text)


def resolve_run_config(tree: Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """A RunConfig from a recipe-like tree (`model.preset` expanded) with typed dotted overrides applied."""
    tree = {s: dict(v) for s, v in tree.items()}
    for section, key, value in map(parse_override, overrides):
        tree.setdefault(section, {})[key] = value
    model = dict(tree.get("model", {}))
    preset = model.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"run config: unknown model preset {preset!r}; known: {sorted(PRESETS)}")
        model = {**MBTConfig.preset(preset).to_dict(), **model}
    return RunConfig.from_dict({**tree, "model": model})


def load_run_config(name_or_file: str, overrides: Sequence[str] = ()) -> RunConfig:
    """A recipe name (see `RECIPES`) or a JSON file, plus dotted overrides (a run directory: `run_dir.read_config`)."""
    if name_or_file in RECIPES:
        tree = RECIPES[name_or_file]
    elif Path(name_or_file).is_file():
        try:
            tree = json.loads(Path(name_or_file).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {name_or_file}: not valid JSON ({e})") from None
    else:
        raise ValueError(f"--config {name_or_file!r}: neither a recipe ({sorted(RECIPES)}) nor a file")
    return resolve_run_config(tree, overrides)
