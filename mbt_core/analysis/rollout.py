"""Attention rollout (Abnar & Zuidema, 2020) for one stream and across MBT's fusion graph (Sec. 3.2, Eq. 8-9).

A layer's attention `A` (heads fused) becomes `Â = (A + I) / 2`, rows normalised: half of every token's
next state is its own residual. Rollout multiplies these layer by layer, `joint_l = Â_l · joint_{l-1}`,
so row i of the result says how much each input token contributes to output token i (rows sum to 1).

`mbt_rollout` lays every stream of `aux["attention"]` into one joint token graph: the modalities in
config order, each `[CLS, patches...]` (no CLS with `gap`), then the fusion tokens. NumPy only; jax arrays
are accepted through `np.asarray`. Computed in float64.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from mbt_core.config import MBTConfig

HEAD_FUSIONS = ("mean", "max", "min")


def _fuse_heads(attn: np.ndarray, head_fusion: str) -> np.ndarray:
    """Reduce the heads axis (third from last) by mean, max or min."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion {head_fusion!r} is not one of {HEAD_FUSIONS}")
    return getattr(np, head_fusion)(attn, axis=-3)


def _normalise_rows(a: np.ndarray) -> np.ndarray:
    """Rows divided by their sums; all-zero rows stay zero."""
    total = a.sum(axis=-1, keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


def _residual_attention(a: np.ndarray, discard_ratio: float = 0.0, offset: int = 0) -> np.ndarray:
    """Â = (A + I)/2 row-normalised for heads-fused A (..., q, k), whose query i is key `offset + i`.

    With `discard_ratio` r, each row first drops its floor(r·(k−1)) smallest weights among the k−1
    entries off its own (diagonal) key, which is always kept, and is re-normalised before the identity
    is added; ties drop the lower key index first. A row left with no mass becomes the identity row.
    """
    q, k = a.shape[-2:]
    a = np.array(a, dtype=np.float64)
    eye = np.eye(q, k, offset)
    drop = int(math.floor(discard_ratio * (k - 1)))
    if drop:
        ranked = np.argsort(np.where(eye > 0, np.inf, a), axis=-1, kind="stable")
        np.put_along_axis(a, ranked[..., :drop], 0.0, axis=-1)
    return _normalise_rows(_normalise_rows(a) + eye)


def _check_attention(a: np.ndarray, name: str) -> np.ndarray:
    """Reject negative or non-finite attention weights, naming the stream and layer."""
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name}: attention weights must be finite and >= 0")
    return a


def attention_rollout(attn: Any, head_fusion: str = "mean", discard_ratio: float = 0.0,
                      start_layer: int = 0) -> np.ndarray:
    """Rollout (Abnar & Zuidema, 2020) of one stream's (layers, heads, T, T) attention, optionally batched first."""
    attn = _check_attention(attn, "attn")
    if attn.ndim not in (4, 5) or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn: expected ([batch,] layers, heads, T, T), got shape {attn.shape}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must lie in [0, 1), got {discard_ratio}")
    layers = attn.shape[-4]
    if not 0 <= start_layer <= layers:
        raise ValueError(f"start_layer must lie in 0..{layers}, got {start_layer}")
    fused = _residual_attention(_fuse_heads(attn, head_fusion), discard_ratio)  # ([batch,] layers, T, T)
    joint = np.broadcast_to(np.eye(attn.shape[-1]), fused.shape[:-3] + attn.shape[-2:])
    for layer in range(start_layer, layers):
        joint = fused[..., layer, :, :] @ joint
    return np.array(joint)


def _streams(attention: Mapping[str, Any], config: MBTConfig) -> tuple[list[str], dict[str, list[np.ndarray]], list]:
    """Modalities present (config order), their per-layer arrays, and the shared `joint` layers."""
    unknown = sorted(set(attention) - set(config.modalities) - {"joint"})
    if unknown:
        raise ValueError(f"attention has streams {unknown} that are not modalities of the config {config.modalities}")
    mods = [m for m in config.modalities if m in attention] or list(config.modalities)
    per_mod = {m: [_check_attention(a, f"attention[{m!r}][{l}]") for l, a in enumerate(attention.get(m, []))]
               for m in mods}
    joint = [_check_attention(a, f"attention['joint'][{l}]") for l, a in enumerate(attention.get("joint", []))]
    for name, layers in [*per_mod.items(), ("joint", joint)]:
        for l, a in enumerate(layers):
            if a.ndim != 4:
                raise ValueError(f"attention[{name!r}][{l}]: expected (batch, heads, q, k), got shape {a.shape}")
    return mods, per_mod, joint


def _own_tokens(m: str, layers: list[np.ndarray], config: MBTConfig, fusion_tokens: int) -> int:
    """A stream's own token count, read from the shapes where they settle it, else from the config."""
    sizes = sorted({a.shape[-2] for a in layers})
    if not sizes:
        return config.num_tokens(m)
    if config.fusion != "bottleneck" or len(sizes) > 1:
        return sizes[0]
    # One size throughout: all layers unfused (late fusion, unimodal evaluation) or all fused (L_f = 0).
    fused_size = config.num_tokens(m) + fusion_tokens
    return sizes[0] - fusion_tokens if fusion_tokens and sizes[0] == fused_size else sizes[0]


def _layer_graph(layer: int, mods: list[str], per_mod: dict, joint: list, spans: dict, fusion: slice,
                 update: str, head_fusion: str, discard_ratio: float) -> np.ndarray:
    """One layer's (batch, T, T) transition over all tokens: row i = how output token i mixes the inputs."""
    total, n_fsn = fusion.stop, fusion.stop - fusion.start
    below = [m for m in mods if layer < len(per_mod[m])]
    if not below:  # a shared self-attention layer over all modalities (Sec. 3.2.1)
        a = joint[layer - len(per_mod[mods[0]])]
        n = spans[mods[-1]].stop
        if a.shape[-2:] != (n, n):
            raise ValueError(f"attention['joint'][{layer - len(per_mod[mods[0]])}]: expected (.., {n}, {n}), "
                             f"got {a.shape}")
        graph = np.zeros((a.shape[0], total, total))
        graph[:, :n, :n] = _residual_attention(_fuse_heads(a, head_fusion), discard_ratio)
        graph[:, fusion, fusion] = np.eye(n_fsn)
        return graph
    batch = per_mod[below[0]][layer].shape[0]
    graph = np.zeros((batch, total, total))
    incoming = np.zeros((batch, n_fsn, total))
    incoming[:, :, fusion] = np.eye(n_fsn)
    reads, written = incoming, []
    for m in mods:
        a, own = per_mod[m][layer], spans[m]
        n = own.stop - own.start
        where = f"attention[{m!r}][{layer}]"
        if a.shape[0] != batch:
            raise ValueError(f"{where}: batch {a.shape[0]} differs from the other streams' {batch}")
        q, k = a.shape[-2:]
        if (q, k) == (n, n):  # no fusion at this layer: the stream attends to itself only
            graph[:, own, own] = _residual_attention(_fuse_heads(a, head_fusion), discard_ratio)
        elif (q, k) == (n, spans[mods[-1]].stop):  # cross-attention (Eq. 5-6): own queries, all keys
            graph[:, own, :fusion.start] = _residual_attention(_fuse_heads(a, head_fusion), discard_ratio, own.start)
        elif (q, k) == (n + n_fsn, n + n_fsn) and n_fsn:  # bottleneck (Eq. 8): own tokens, then fusion tokens
            r = _residual_attention(_fuse_heads(a, head_fusion), discard_ratio)
            graph[:, own, own] = r[:, :n, :n]
            graph[:, own] += r[:, :n, n:] @ reads
            out = r[:, n:, n:] @ reads
            out[:, :, own] += r[:, n:, :n]
            written.append(out)
            if update == "asymmetric":  # the next modality reads what this one wrote
                reads = out
        else:
            raise ValueError(f"{where}: shape {a.shape} fits none of (.., {n}, {n}) unfused, "
                             f"(.., {n}, {spans[mods[-1]].stop}) cross-attention, "
                             f"(.., {n + n_fsn}, {n + n_fsn}) bottleneck")
    if not written:
        graph[:, fusion, fusion] = np.eye(n_fsn)  # no fusion tokens yet (below L_f): they carry nothing
    elif update == "mean":
        graph[:, fusion] = np.mean(written, axis=0)  # Eq. 9
    else:
        graph[:, fusion] = written[-1]
    return graph


def mbt_rollout(attention: Mapping[str, Any], config: MBTConfig, head_fusion: str = "mean",
                discard_ratio: float = 0.0, start_layer: int = 0) -> dict[str, Any]:
    """Rollout over MBT's joint token graph from `aux["attention"]`: joint matrix, CLS-to-patch maps, cross-modal flow.

    Returns `joint` (batch, T, T) over [each modality's tokens..., fusion tokens]; `cls_to_patches[m]`
    (batch, patches of m): modality m's output CLS row over its own patches; `cross_modal` (batch, M, P):
    row m is the same readout over all modalities' patches with m's own set to 0 (exactly 0 when no
    information can cross); `tokens`: the slice of each modality and of `fusion` in the joint order.
    With the `gap` classifier there is no CLS: the readout is the mean of modality m's output token rows.
    Modalities are those present in `attention`, in config order; which layers are fused is read from the
    shapes; fusion tokens are `config.fsn_tokens` (none where the model creates none: other fusions, L_f = L).
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must lie in [0, 1), got {discard_ratio}")
    mods, per_mod, joint_layers = _streams(attention, config)
    n_fsn = config.fsn_tokens
    spans, start = {}, 0
    for m in mods:
        n = _own_tokens(m, per_mod[m], config, n_fsn)
        spans[m], start = slice(start, start + n), start + n
    fusion = slice(start, start + n_fsn)
    depths = {len(per_mod[m]) for m in mods}
    if len(depths) > 1:
        raise ValueError(f"streams have different numbers of layers: { {m: len(per_mod[m]) for m in mods} }")
    layers = depths.pop() + len(joint_layers)
    if layers == 0:
        raise ValueError("attention holds no layers")
    if not 0 <= start_layer <= layers:
        raise ValueError(f"start_layer must lie in 0..{layers}, got {start_layer}")
    joint = None
    for layer in range(start_layer, layers):
        graph = _layer_graph(layer, mods, per_mod, joint_layers, spans, fusion, config.bottleneck_update,
                             head_fusion, discard_ratio)
        joint = graph if joint is None else graph @ joint
    if joint is None:
        batch = [*per_mod[mods[0]], *joint_layers][0].shape[0]
        joint = np.broadcast_to(np.eye(fusion.stop), (batch, fusion.stop, fusion.stop)).copy()
    cls = int(config.classifier == "token")
    readout = {m: joint[:, spans[m].start] if cls else joint[:, spans[m]].mean(axis=1) for m in mods}
    patch_cols = np.concatenate([np.arange(spans[m].start + cls, spans[m].stop) for m in mods])
    owner = np.concatenate([np.full(spans[m].stop - spans[m].start - cls, i) for i, m in enumerate(mods)])
    cross = np.stack([readout[m][:, patch_cols] * (owner != i) for i, m in enumerate(mods)], axis=1)
    return {
        "joint": joint,
        "cls_to_patches": {m: readout[m][:, spans[m].start + cls:spans[m].stop] for m in mods},
        "cross_modal": cross,
        "tokens": {**spans, "fusion": fusion},
    }


def tightness(attention_map: Any, mass: float = 0.5) -> dict[str, Any]:
    """Spread of a non-negative map: fraction of cells holding `mass` of the total, and entropy (nats)."""
    p = np.asarray(attention_map, dtype=np.float64).ravel()
    if p.size == 0 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("attention_map must be non-empty, finite, >= 0 and not all zero")
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must lie in (0, 1], got {mass}")
    p = p / p.sum()
    cumulative = np.cumsum(np.sort(p)[::-1])
    cells = int(np.searchsorted(cumulative, mass * (1 - 1e-12))) + 1  # smallest count reaching `mass`
    nonzero = p[p > 0]
    return {"area": min(cells, p.size) / p.size, "entropy": float(-np.sum(nonzero * np.log(nonzero))),
            "num_cells": int(p.size)}
