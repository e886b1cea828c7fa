"""Load checkpoints trained with the official Scenic MBT code: sizes inferred from shapes, names checked.

Reads a Flax msgpack checkpoint (params under `params` or `optimizer/target`) or an `.npz` of
`/`-joined parameter paths (with or without a leading `param/`). Never unpickles anything.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from mbt_core.config import MBTConfig
from mbt_core.model.model import MBT, dummy_inputs, param_suffix

_MOD_NAME = {"spectrogram": "spec", "spec": "spec"}


def read_param_tree(path: str | Path) -> dict[str, np.ndarray]:
    """Flat `{"a/b/c": array}` parameters of a msgpack or npz checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            if any(k.startswith("param/") for k in keys):
                return {k[len("param/"):]: np.asarray(data[k]) for k in keys if k.startswith("param/")}
            return {k: np.asarray(data[k]) for k in keys}
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several unrelated types on corrupt input.
        raise ValueError(f"checkpoint {path}: not a readable Flax msgpack or .npz file ({err})") from err
    for route in (("params",), ("optimizer", "target"), ("opt_state", "target"), ()):
        node = tree
        for key in route:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and "params" in node and route:
            node = node["params"]
        if isinstance(node, dict) and any("Transformer" in k for k in node):
            return {"/".join(k): np.asarray(v) for k, v in flatten_dict(node).items()}
    raise ValueError(f"checkpoint {path}: no parameter tree under `params` or `optimizer/target` "
                     f"(top-level keys: {sorted(tree) if isinstance(tree, dict) else type(tree).__name__})")


def canonical_names(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename released variants (`_spec`, `clsspec`) to the `_spectrogram` names this model uses."""
    out = {}
    for key, value in flat.items():
        key = re.sub(r"(embedding|posembed_input|encoderblock_\d+)_spec(?=/|$)", r"\1_spectrogram", key)
        key = re.sub(r"^clsspec$", "clsspectrogram", key)
        out[key] = value
    return out


def _modalities(flat: dict[str, np.ndarray]) -> tuple[str, ...]:
    found = []
    for key in flat:
        match = re.fullmatch(r"embedding(?:_(\w+))?/kernel", key)
        if match:
            found.append(_MOD_NAME.get(match.group(1), match.group(1)) if match.group(1) else "rgb")
    order = {"spec": 0, "rgb": 1}  # The official processing order ('spectrogram', 'rgb').
    return tuple(sorted(found, key=lambda m: (order.get(m, 2), m)))


def _spec_grid(count: int, mel_cols: int) -> tuple[int, int]:
    """(time, freq) patches: the preferred mel width if time >= freq, else the widest such split."""
    if mel_cols and count % mel_cols == 0 and count // mel_cols >= mel_cols:
        return count // mel_cols, mel_cols
    cols = max(c for c in range(1, math.isqrt(count) + 1) if count % c == 0)
    return count // cols, cols


def _video_grid(count: int, side: int) -> tuple[int, int]:
    """(time, side) patches with a square frame: the preferred side if it divides, else the largest square."""
    if side and count % (side * side) == 0:
        return count // (side * side), side
    side = max(s for s in range(1, math.isqrt(count) + 1) if count % (s * s) == 0)
    return count // (side * side), side


def infer_config(flat: dict[str, np.ndarray], **overrides) -> MBTConfig:
    """An MBTConfig whose every shape matches the flat parameter tree; `overrides` fix the rest."""
    def shape(key):
        if key not in flat:
            raise ValueError(f"checkpoint lacks {key!r}, needed to infer the model size")
        return flat[key].shape

    mods = _modalities(flat)
    if not mods:
        raise ValueError("checkpoint has no `embedding*/kernel`: not an MBT/ViT parameter tree")
    dim = shape("Transformer/encoder_norm/scale")[0]
    layers = {int(m.group(1)) for k in flat if (m := re.match(r"Transformer/encoderblock_(\d+)", k))}
    num_layers = max(layers) + 1
    shared = "Transformer/encoderblock_0/LayerNorm_0/scale" in flat and not any(
        k.startswith("Transformer/encoderblock_0_") for k in flat) and len(mods) > 1
    block0 = "Transformer/encoderblock_0" + ("" if shared else param_suffix(mods[0]))
    heads = shape(f"{block0}/MultiHeadDotProductAttention_0/query/kernel")[1]
    mlp = shape(f"{block0}/MlpBlock_0/Dense_0/kernel")[1]
    classifier = "token" if any(k == "cls" or k.startswith("cls") for k in flat) else "gap"
    fields: dict[str, Any] = dict(hidden_size=dim, num_layers=num_layers, num_heads=heads, mlp_dim=mlp,
                                  modalities=mods, classifier=classifier,
                                  num_classes=shape("output_projection/kernel")[1])
    has_cls = classifier == "token"
    for m in mods:
        sfx = param_suffix(m)
        kernel = shape(f"embedding{sfx}/kernel")
        patches = shape(f"Transformer/posembed_input{sfx}/pos_embedding")[1] - int(has_cls)
        if m == "spec":
            pt, pf, channels = kernel[0], kernel[1], kernel[2]
            if pt != pf:
                raise ValueError(f"embedding_spectrogram/kernel {kernel}: only square spectrogram patches are supported")
            mel = overrides.get("mel_bins", 128)
            rows, cols = _spec_grid(patches, mel // pf if mel % pf == 0 else 0)
            fields.update(spec_patch=pt, spec_channels=channels, mel_bins=cols * pf, spec_seconds=rows * pt / 100)
        elif m == "rgb":
            t, h, w, _channels = kernel[:4]
            if h != w:
                raise ValueError(f"embedding/kernel {kernel}: only square RGB patches are supported")
            size = overrides.get("image_size", 224)
            frames, side = _video_grid(patches, size // h if size % h == 0 else 0)
            fields.update(rgb_tubelet=t, rgb_patch=h, image_size=side * h, rgb_frames=frames * t)
    if "bottleneck" in flat and len(mods) > 1:
        stored = shape("bottleneck")[1]
        extra = overrides.get("extra_fusion_token", has_cls)  # The official token model stores B+1.
        fields.update(fusion="bottleneck", num_bottlenecks=stored - int(extra), extra_fusion_token=extra)
    else:
        fields.update(fusion="self_attention" if shared else "cross_attention")
    if len(mods) > 1 and "fusion_layer" not in overrides:
        raise ValueError("fusion_layer (L_f) cannot be inferred from parameter shapes: pass fusion_layer=...")
    fields.setdefault("fusion_layer", num_layers)
    fields.update(overrides)
    return MBTConfig(**fields)


def load_scenic(path: str | Path, *, sum_spec_channels: bool = False, **overrides) -> tuple[MBTConfig, dict]:
    """Read an official MBT checkpoint into `(MBTConfig, params)`; `params` goes under `"params"`."""
    flat = canonical_names(read_param_tree(path))
    if sum_spec_channels and "embedding_spectrogram/kernel" in flat:
        # Exact only for tiled input: the official pipeline feeds the same log-mel to all channels.
        flat["embedding_spectrogram/kernel"] = flat["embedding_spectrogram/kernel"].sum(axis=2, keepdims=True)
    config = infer_config(flat, **overrides)
    params = match_params(flat, config, source=str(path))
    return config, params


def match_params(flat: dict[str, np.ndarray], config: MBTConfig, source: str = "checkpoint") -> dict:
    """Check a flat tree against the model of `config`: missing or misshapen keys raise, extra keys warn."""
    expected = jax.eval_shape(lambda: MBT(config).init(jax.random.PRNGKey(0), dummy_inputs(config, 1),
                                                       train=False))["params"]
    expected = {"/".join(k): v.shape for k, v in flatten_dict(expected).items()}
    missing = sorted(set(expected) - set(flat))
    if missing:
        raise ValueError(f"{source}: missing parameters for this config: {missing}")
    wrong = [f"{k}: stored {flat[k].shape}, model needs {s}" for k, s in expected.items() if flat[k].shape != s]
    if wrong:
        raise ValueError(f"{source}: parameters of the wrong shape: " + "; ".join(wrong))
    unused = sorted(set(flat) - set(expected))
    if unused:
        warnings.warn(f"{source}: ignoring parameters this config does not use: {unused}", stacklevel=2)
    return unflatten_dict({tuple(k.split("/")): np.asarray(flat[k]) for k in expected})
