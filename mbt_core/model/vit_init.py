"""Initialise MBT from an ImageNet-21K ViT checkpoint in the public `.npz` format (Sec. 4.2).

Rules (as the official code, except where noted): the encoder is copied into every modality's tower;
`cls` into every modality's CLS (the official code leaves the spectrogram CLS at its random init — we
copy it); positional embeddings are resized with `scipy.ndimage.zoom(order=1)` to each modality's grid
(tiled over time for RGB); the spectrogram patch kernel sums the RGB kernel's input channels (or copies it
for 3-channel spectrograms); tubelet kernels hold the 2-D kernel at the central frame; fusion tokens keep
their N(0, 0.02) init (paper) unless `init_fusion_from_posemb` (official); the classifier is dropped.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
from flax.traverse_util import flatten_dict, unflatten_dict

from mbt_core.config import MBTConfig, is_spectrogram
from mbt_core.model.model import cls_name, param_suffix

# The public ViT checkpoints number the sub-layers of a block differently from our (Scenic MBT) tree.
BLOCK_KEYS = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
              "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0",
              # big_vision's checkpoints already use the target names.
              "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_0", "LayerNorm_1": "LayerNorm_1",
              "MlpBlock_0": "MlpBlock_0"}


@dataclasses.dataclass
class InitReport:
    """What an initialisation used and left alone."""

    unused_keys: list[str]  # Checkpoint keys that initialised nothing.
    uninitialised: list[str]  # Model parameters left at their random init.

    def __str__(self) -> str:
        return (f"ViT init: {len(self.unused_keys)} checkpoint key(s) unused {self.unused_keys}; "
                f"{len(self.uninitialised)} parameter(s) not initialised {self.uninitialised}")


def read_vit_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Flat `{"a/b": array}` of a ViT .npz (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k]) for k in data.files}


def posemb_grid(flat: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(CLS slot or None, (g, g, D) grid, source key) of the checkpoint's positional embedding."""
    for key in ("Transformer/posembed_input/pos_embedding", "pos_embedding"):
        if key in flat:
            posemb = flat[key][0]
            side = int(round(np.sqrt(len(posemb))))
            cls = None
            if side * side != len(posemb):  # A CLS slot in front of a square grid.
                cls, posemb = posemb[:1], posemb[1:]
                side = int(round(np.sqrt(len(posemb))))
            if side * side != len(posemb):
                raise ValueError(f"{key}: {len(posemb)} positions are not a square grid (with or without CLS)")
            return cls, posemb.reshape(side, side, -1), key
    raise ValueError("ViT checkpoint has no positional embedding (`Transformer/posembed_input/pos_embedding` "
                     "or `pos_embedding`)")


def zoom_grid(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a (h, w, D) grid to `shape` with linear interpolation, as the official code."""
    factors = (shape[0] / grid.shape[0], shape[1] / grid.shape[1], 1)
    return scipy.ndimage.zoom(grid, factors, order=1)


def _posemb_for(config: MBTConfig, m: str, cls: np.ndarray | None, grid: np.ndarray) -> np.ndarray:
    g = config.grid(m)
    if is_spectrogram(m):
        patches = zoom_grid(grid, g).reshape(-1, grid.shape[-1])
    else:  # Resize each frame's grid, then tile over time.
        frame = zoom_grid(grid, g[1:]).reshape(-1, grid.shape[-1])
        patches = np.tile(frame, (g[0], 1))
    if config.classifier == "token":
        slot = cls if cls is not None else np.zeros((1, grid.shape[-1]), grid.dtype)
        patches = np.concatenate([slot, patches], axis=0)
    return patches[None]


def _fusion_from_posemb(config: MBTConfig, cls: np.ndarray | None, grid: np.ndarray) -> np.ndarray:
    # Official: the grid is resized to the fusion tokens (less the CLS slot for the token classifier).
    tokens = config.num_fusion_tokens - int(config.classifier == "token" and cls is not None)
    rows = max(r for r in range(1, int(np.sqrt(tokens)) + 1) if tokens % r == 0)
    patches = zoom_grid(grid, (rows, tokens // rows)).reshape(-1, grid.shape[-1])
    if tokens < config.num_fusion_tokens:
        patches = np.concatenate([cls, patches], axis=0)
    return patches[None]


def _embedding_kernel(config: MBTConfig, m: str, kernel2d: np.ndarray) -> np.ndarray:
    patch = config.patch_shape(m)
    if tuple(kernel2d.shape[:2]) != tuple(patch[-2:]):
        raise ValueError(f"ViT embedding/kernel {kernel2d.shape}: patch {kernel2d.shape[:2]} does not match "
                         f"{m}'s patch {patch[-2:]}")
    if is_spectrogram(m):
        return kernel2d if config.spec_channels == 3 else kernel2d.sum(axis=2, keepdims=True)
    kernel = np.zeros((patch[0], *kernel2d.shape), kernel2d.dtype)
    kernel[patch[0] // 2] = kernel2d  # Central-frame initialisation of tubelets.
    return kernel


def init_from_vit(params: Any, config: MBTConfig, vit: dict[str, np.ndarray] | str | Path,
                  init_fusion_from_posemb: bool = False) -> tuple[dict, InitReport]:
    """MBT parameters with every part the ViT checkpoint covers replaced; plus what was (not) used."""
    source = read_vit_npz(vit) if isinstance(vit, (str, Path)) else dict(vit)
    target = {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}
    out, used, set_keys = dict(target), set(), set()

    def put(key: str, value: np.ndarray, *sources: str) -> None:
        if key not in target:
            return
        if value.shape != target[key].shape:
            raise ValueError(f"ViT init: {sources[0] if sources else key} gives {key} shape {value.shape}, "
                             f"model needs {target[key].shape}")
        out[key] = value.astype(target[key].dtype)
        used.update(sources)
        set_keys.add(key)

    shared = config.fusion == "self_attention"
    towers = [""] if shared else [param_suffix(m) for m in config.modalities]
    for key, value in source.items():
        match = re.fullmatch(r"Transformer/encoderblock_(\d+)/([^/]+)/(.+)", key)
        if match and match.group(2) in BLOCK_KEYS:
            layer, sub, rest = match.groups()
            for sfx in towers:
                put(f"Transformer/encoderblock_{layer}{sfx}/{BLOCK_KEYS[sub]}/{rest}", value, key)
        elif key.startswith("Transformer/encoder_norm/"):
            put(key, value, key)
    cls, grid, posemb_key = posemb_grid(source)
    for m in config.modalities:
        sfx = param_suffix(m)
        put(f"Transformer/posembed_input{sfx}/pos_embedding", _posemb_for(config, m, cls, grid), posemb_key)
        if "embedding/kernel" in source:
            put(f"embedding{sfx}/kernel", _embedding_kernel(config, m, source["embedding/kernel"]), "embedding/kernel")
            put(f"embedding{sfx}/bias", source["embedding/bias"], "embedding/bias")
        if "cls" in source and config.classifier == "token":
            put(cls_name(m, config), source["cls"], "cls")
    if init_fusion_from_posemb and "bottleneck" in target:
        put("bottleneck", _fusion_from_posemb(config, cls, grid), posemb_key)
    report = InitReport(unused_keys=sorted(set(source) - used), uninitialised=sorted(set(target) - set_keys))
    return unflatten_dict({tuple(k.split("/")): v for k, v in out.items()}), report
