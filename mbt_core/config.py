"""MBTConfig: every size and switch of the Multimodal Bottleneck Transformer, as plain frozen data.

A config alone fixes every shape (Sec. 3, 4.2): presets by name, `dataclasses.replace` style overrides.
This module imports nothing else of the project.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

FUSIONS = ("bottleneck", "cross_attention", "self_attention")
UPDATES = ("mean", "asymmetric")
CLASSIFIERS = ("token", "gap")
# How attention runs when its weights are not asked for (`mbt_core/model/attention.py`).
ATTENTION_IMPLS = ("auto", "explicit", "xla", "cudnn", "per_head")
LABEL_TYPES = ("multi_label", "single_label", "multi_head")  # a data card's `label_type`; the loss follows it


def is_spectrogram(modality: str) -> bool:
    """True for spectrogram-like modalities (`spec`, `spec_*`); every other modality is video-like."""
    return modality == "spec" or modality.startswith("spec_")


@dataclasses.dataclass(frozen=True)
class MBTConfig:
    """Hyper-parameters and input geometry of one MBT model (Sec. 3, 4.2 of the paper)."""

    # ViT encoder (Eq. 2-3).
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    # Modalities, in the order they are concatenated and in which asymmetric updates run.
    modalities: tuple[str, ...] = ("spec", "rgb")
    # Fusion (Sec. 3.2): strategy, L_f (0..L; L = late fusion), B.
    fusion: str = "bottleneck"
    fusion_layer: int = 8
    num_bottlenecks: int = 4
    extra_fusion_token: bool = False  # True: the official B+1 fusion tokens.
    bottleneck_update: str = "mean"  # Eq. 9 ("mean") or sequential ("asymmetric").
    fuse_at_eval: bool = True  # False: official `test_with_bottlenecks=False`.
    # Head.
    classifier: str = "token"
    num_classes: Any = 527  # int, or a mapping head name -> classes (stored as sorted-by-insertion pairs).
    # Regularisation.
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth: float = 0.0  # Linear over depth: layer l drops with l/(L-1) * p.
    stochastic_depth_rescale: bool = False  # The official code does not rescale by 1/(1-p).
    # Execution only (the parameters and the function are the same): attention implementation, and
    # per-layer rematerialisation (recompute each block's activations in the backward pass).
    attention_impl: str = "auto"
    remat: bool = False
    # Video-like geometry (`rgb`, and any other non-spectrogram modality).
    rgb_frames: int = 8
    image_size: int = 224
    rgb_patch: int = 16
    rgb_tubelet: int = 1  # 1: per-frame 2-D patches (paper); 2: official 3-D tubelets.
    video_channels: tuple[tuple[str, int], ...] = (("flow", 2),)  # Channels of non-RGB video modalities.
    # Spectrogram geometry: (time, mel) with 100 frames per second (Sec. 4.2).
    spec_seconds: float = 8.0
    mel_bins: int = 128
    spec_patch: int = 16
    spec_channels: int = 1  # 3 for official checkpoints (tiled log-mel).

    def __post_init__(self):
        if isinstance(self.num_classes, Mapping):
            object.__setattr__(self, "num_classes", tuple((str(k), int(v)) for k, v in self.num_classes.items()))
        elif isinstance(self.num_classes, list):
            object.__setattr__(self, "num_classes", tuple(tuple(p) for p in self.num_classes))
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "video_channels", tuple(tuple(p) for p in self.video_channels))
        self.validate()

    # ----- derived geometry -----
    @property
    def spec_frames(self) -> int:
        """Spectrogram length in frames: 100 per second (10 ms hop)."""
        return int(round(100 * self.spec_seconds))

    @property
    def heads(self) -> dict[str, int] | None:
        """The head name -> classes mapping, or None for a single head."""
        return dict(self.num_classes) if isinstance(self.num_classes, tuple) else None

    @property
    def total_classes(self) -> int:
        """Width of the one shared output projection."""
        return sum(self.heads.values()) if self.heads else int(self.num_classes)

    @property
    def num_fusion_tokens(self) -> int:
        """Fusion tokens actually created: B, or B+1 with the official extra token."""
        return self.num_bottlenecks + int(self.extra_fusion_token)

    # ----- fusion rules (Sec. 3.2): every module asks these instead of re-deriving them -----
    @property
    def is_multimodal(self) -> bool:
        """True with two or more modalities: only then can any layer fuse."""
        return len(self.modalities) > 1

    def is_fused(self, layer: int) -> bool:
        """True when modalities exchange information in `layer` (0-based): layer >= L_f, two or more modalities."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} must lie in 0..{self.num_layers - 1} (num_layers = {self.num_layers})")
        return layer >= self.fusion_layer and self.is_multimodal

    @property
    def fused_layers(self) -> range:
        """The fused layers L_f..L-1 (empty for late fusion and for one modality)."""
        return range(self.fusion_layer if self.is_multimodal else self.num_layers, self.num_layers)

    @property
    def unfused_layers(self) -> range:
        """The unimodal layers below the first fused one."""
        return range(0, self.fused_layers.start)

    @property
    def has_fusion_tokens(self) -> bool:
        """True when the model creates `fsn` tokens (bottleneck fusion with a fused layer), which is exactly
        when B changes the model."""
        return self.fusion == "bottleneck" and bool(self.fused_layers) and self.num_fusion_tokens > 0

    @property
    def fsn_tokens(self) -> int:
        """Fusion tokens in the joint token order: `num_fusion_tokens` where the model creates them, else 0."""
        return self.num_fusion_tokens if self.has_fusion_tokens else 0

    def channels(self, modality: str) -> int:
        """Input channels of a modality."""
        if is_spectrogram(modality):
            return self.spec_channels
        return dict(self.video_channels).get(modality, 3)

    def patch_shape(self, modality: str) -> tuple[int, ...]:
        """Patch (kernel = stride) of a modality: (t, h, w) for video, (time, freq) for spectrograms."""
        if is_spectrogram(modality):
            return (self.spec_patch, self.spec_patch)
        return (self.rgb_tubelet, self.rgb_patch, self.rgb_patch)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Per-example input shape: (frames, H, W, C) for video, (time, mel, C) for spectrograms."""
        if is_spectrogram(modality):
            return (self.spec_frames, self.mel_bins, self.spec_channels)
        return (self.rgb_frames, self.image_size, self.image_size, self.channels(modality))

    def grid(self, modality: str) -> tuple[int, ...]:
        """Patch grid of a modality: (t, h, w) for video, (time, freq) for spectrograms."""
        shape = self.input_shape(modality)[:-1]
        return tuple(s // p for s, p in zip(shape, self.patch_shape(modality)))

    def num_patches(self, modality: str) -> int:
        """Patch tokens of a modality (the CLS token not counted)."""
        return math.prod(self.grid(modality))

    def num_tokens(self, modality: str) -> int:
        """Tokens of a modality's stream: patches plus the CLS token of the `token` classifier."""
        return self.num_patches(modality) + int(self.classifier == "token")

    # ----- validation -----
    def validate(self) -> None:
        """Raise a ValueError naming the field when the config is impossible."""
        def bad(field, why):
            raise ValueError(f"MBTConfig.{field}: {why}")

        for f in ("hidden_size", "num_layers", "num_heads", "mlp_dim", "rgb_frames", "image_size",
                  "rgb_patch", "rgb_tubelet", "mel_bins", "spec_patch", "spec_channels"):
            if int(getattr(self, f)) < 1:
                bad(f, f"must be >= 1, got {getattr(self, f)}")
        if self.hidden_size % self.num_heads:
            bad("num_heads", f"{self.num_heads} heads do not divide hidden_size {self.hidden_size}")
        if not self.modalities:
            bad("modalities", "at least one modality is needed")
        if len(set(self.modalities)) != len(self.modalities):
            bad("modalities", f"names repeat in {self.modalities}")
        if self.fusion not in FUSIONS:
            bad("fusion", f"{self.fusion!r} is not one of {FUSIONS}")
        if self.bottleneck_update not in UPDATES:
            bad("bottleneck_update", f"{self.bottleneck_update!r} is not one of {UPDATES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            bad("attention_impl", f"{self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        if self.classifier not in CLASSIFIERS:
            bad("classifier", f"{self.classifier!r} is not one of {CLASSIFIERS}")
        if not 0 <= self.fusion_layer <= self.num_layers:
            bad("fusion_layer", f"L_f = {self.fusion_layer} must lie in 0..num_layers ({self.num_layers})")
        if self.num_bottlenecks < 0:
            bad("num_bottlenecks", f"must be >= 0, got {self.num_bottlenecks}")
        if (self.fusion == "bottleneck" and self.num_fusion_tokens == 0 and self.fusion_layer < self.num_layers
                and len(self.modalities) > 1):
            bad("num_bottlenecks", f"B = 0 with bottleneck fusion from L_f = {self.fusion_layer} < L = "
                f"{self.num_layers} leaves no path between modalities (use fusion_layer = num_layers for late fusion)")
        if self.total_classes < 1:
            bad("num_classes", f"needs at least one class, got {self.num_classes}")
        for p in ("dropout", "attention_dropout", "stochastic_depth"):
            if not 0.0 <= getattr(self, p) < 1.0:
                bad(p, f"must lie in [0, 1), got {getattr(self, p)}")
        if self.spec_seconds <= 0:
            bad("spec_seconds", f"must be > 0, got {self.spec_seconds}")
        for m in self.modalities:
            shape = self.input_shape(m)[:-1]
            for size, patch, name in zip(shape, self.patch_shape(m), ("time", "height/mel", "width")):
                if size % patch:
                    field = "spec_seconds/mel_bins" if is_spectrogram(m) else "rgb_frames/image_size"
                    bad(field, f"{m} {name} size {size} is not divisible by its patch size {patch}")

    # ----- presets -----
    @classmethod
    def preset(cls, name: str, **overrides) -> "MBTConfig":
        """Build a named preset (see `PRESETS`) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        fields = {**PRESETS[name], **overrides}
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"MBTConfig has no field(s) {sorted(unknown)}")
        return cls(**fields)

    def replace(self, **changes) -> "MBTConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (num_classes as a dict when there are several heads)."""
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        d["video_channels"] = dict(self.video_channels)
        d["num_classes"] = self.heads if self.heads else self.num_classes
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MBTConfig":
        """Inverse of `to_dict`."""
        d = dict(d)
        if isinstance(d.get("video_channels"), Mapping):
            d["video_channels"] = tuple(d["video_channels"].items())
        return cls(**d)


_VIT_B16 = dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072)

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model (Sec. 4.2): ViT-B/16, 8 frames of 224^2, 8 s of 128-bin log-mel, B = 4, L_f = 8.
    "paper-b16": dict(**_VIT_B16, rgb_frames=8, image_size=224, rgb_patch=16, rgb_tubelet=1,
                      spec_seconds=8.0, mel_bins=128, spec_patch=16, fusion="bottleneck",
                      fusion_layer=8, num_bottlenecks=4, classifier="token", num_classes=527),
    # The geometry of the released AudioSet checkpoints: 32 frames, 2-frame tubelets, 3-channel
    # spectrograms, B+1 fusion tokens. (The released `gap` + bottleneck config crashes upstream.)
    "official-audioset": dict(**_VIT_B16, rgb_frames=32, image_size=224, rgb_patch=16, rgb_tubelet=2,
                              spec_seconds=8.0, mel_bins=128, spec_patch=16, spec_channels=3,
                              fusion="bottleneck", fusion_layer=8, num_bottlenecks=4,
                              extra_fusion_token=True, classifier="token", num_classes=527),
    # CPU / teaching sizes: 16 frames of 24^2 in 2x8x8 tubelets (72 tokens), 400 x 32 log-mel in 16x16
    # patches (50 tokens); about 200 ms per step of batch 32 on 2 cores.
    "tiny": dict(hidden_size=64, num_layers=3, num_heads=4, mlp_dim=128, rgb_frames=16, image_size=24,
                 rgb_patch=8, rgb_tubelet=2, spec_seconds=4.0, mel_bins=32, spec_patch=16,
                 fusion="bottleneck", fusion_layer=1, num_bottlenecks=4, classifier="token", num_classes=10),
    # The synthetic benchmark's model (`synthetic-tiny`, the suite): tiny with frames of 48^2 in 4x12x12
    # tubelets, a 4 x 4 patch grid with the circle and the square in separate halves and one tubelet
    # per second (64 tokens, fewer than tiny's 72), so the shapes stay plain under a rollout overlay.
    "tiny-48": dict(hidden_size=64, num_layers=3, num_heads=4, mlp_dim=128, rgb_frames=16, image_size=48,
                    rgb_patch=12, rgb_tubelet=4, spec_seconds=4.0, mel_bins=32, spec_patch=16,
                    fusion="bottleneck", fusion_layer=1, num_bottlenecks=4, classifier="token", num_classes=10),
    # Smallest shapes that still exercise every path (unit tests).
    "micro": dict(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, rgb_frames=2, image_size=8,
                  rgb_patch=4, rgb_tubelet=1, spec_seconds=0.16, mel_bins=8, spec_patch=4,
                  fusion="bottleneck", fusion_layer=1, num_bottlenecks=2, classifier="token", num_classes=5),
}
