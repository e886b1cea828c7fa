"""One layer's raw attention, one query at a time, laid on the patch grids (the layer/head/query view).

`aux["attention"]` (docs/architecture.md, "The model's contract") holds per stream and layer (batch, heads, q, k):
a modality's own tokens ([CLS, patches...]) first, the fusion tokens last in fused bottleneck layers (Eq. 8);
all modalities' tokens as keys in cross-attention layers (Eq. 5-6); one `joint` stream for shared
self-attention layers (Sec. 3.2.1). A query is a modality's CLS token (`("cls", m)`; with the `gap` classifier,
the mean over m's tokens) or fusion token i (`("fusion", i)`), which exists only in fused bottleneck layers and
is updated in every modality's stream: its map holds each stream's row over that stream's own tokens.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mbt_core.config import MBTConfig

Query = tuple[str, Any]  # ("cls", modality) or ("fusion", index)


def stream_layers(attention: Mapping[str, list], config: MBTConfig) -> tuple[list[str], int, int]:
    """(modalities present, layers in the per-modality streams, total layers)."""
    # Self-attention fused from layer 0 has only the joint stream: then every modality of the config is in it.
    mods = [m for m in config.modalities if m in attention] or list(config.modalities)
    own = len(attention.get(mods[0], []))
    if not own + len(attention.get("joint", [])):
        raise ValueError(f"attention has streams {sorted(attention)} and no layers of the modalities {config.modalities}")
    return mods, own, own + len(attention.get("joint", []))


def _rows(a: Any, batch: int, head: str | int) -> np.ndarray:
    """One example's (q, k) weights: the mean over heads, or one head."""
    a = np.asarray(a, np.float64)[batch]
    if head == "mean":
        return a.mean(axis=0)
    if not 0 <= int(head) < a.shape[0]:
        raise ValueError(f"head {head} is outside 0..{a.shape[0] - 1}")
    return a[int(head)]


def layer_kind(attention: Mapping[str, list], config: MBTConfig, layer: int) -> str:
    """How layer `layer` (0-based) attends: 'unfused', 'bottleneck', 'cross_attention' or 'self_attention'."""
    mods, own, total = stream_layers(attention, config)
    if not 0 <= layer < total:
        raise ValueError(f"layer {layer} is outside 0..{total - 1}")
    if layer >= own:
        return "self_attention"
    q, k = np.shape(attention[mods[0]][layer])[-2:]
    n = config.num_tokens(mods[0])
    if (q, k) == (n, n):
        return "unfused"
    return "bottleneck" if q == k else "cross_attention"


def queries(attention: Mapping[str, list], config: MBTConfig, layer: int) -> list[Query]:
    """The queries layer `layer` has: every modality's CLS, then the fusion tokens where the layer has them."""
    mods, _, _ = stream_layers(attention, config)
    out: list[Query] = [("cls", m) for m in mods]
    if layer_kind(attention, config, layer) == "bottleneck":
        out += [("fusion", i) for i in range(config.fsn_tokens)]
    return out


def query_label(query: Query) -> str:
    """A query as a person reads it: 'rgb CLS', 'fusion token 2'."""
    kind, which = query
    return f"{which} CLS" if kind == "cls" else f"fusion token {which + 1}"


def attention_row(attention: Mapping[str, list], config: MBTConfig, layer: int, query: Query,
                  head: str | int = "mean", batch: int = 0) -> dict[str, Any]:
    """Where one query looks at one layer: `maps[m]` over m's patch grid, `cls[m]` (its weight on m's CLS) and
    `fusion` (weights on the fusion tokens, None where the layer has none). One stream's row sums to 1."""
    mods, own_layers, _ = stream_layers(attention, config)
    kind = layer_kind(attention, config, layer)
    n = {m: config.num_tokens(m) for m in mods}
    cls = int(config.classifier == "token")
    if query not in queries(attention, config, layer):
        raise ValueError(f"layer {layer + 1} has no query {query_label(query)} ({kind} layer; queries: "
                         f"{', '.join(query_label(q) for q in queries(attention, config, layer))})")
    keys: dict[str, np.ndarray] = {}
    fusion = None
    if kind == "self_attention":
        rows = _rows(attention["joint"][layer - own_layers], batch, head)
        starts = dict(zip(mods, np.cumsum([0] + [n[m] for m in mods])))
        row = _query_row(rows, starts[query[1]], n[query[1]], cls)
        keys = {m: row[starts[m]:starts[m] + n[m]] for m in mods}
    elif query[0] == "fusion":
        rows = {m: _rows(attention[m][layer], batch, head) for m in mods}
        keys = {m: rows[m][n[m] + query[1], :n[m]] for m in mods}
        fusion = np.mean([rows[m][n[m] + query[1], n[m]:] for m in mods], axis=0)
    else:
        m = query[1]
        row = _query_row(_rows(attention[m][layer], batch, head), 0, n[m], cls)
        if kind == "cross_attention":
            starts = dict(zip(mods, np.cumsum([0] + [n[s] for s in mods])))
            keys = {s: row[starts[s]:starts[s] + n[s]] for s in mods}
        else:
            keys = {m: row[:n[m]]}
            fusion = row[n[m]:] if kind == "bottleneck" else None
    zeros = {m: np.zeros(n[m]) for m in mods}
    keys = {m: keys.get(m, zeros[m]) for m in mods}
    return {"maps": {m: keys[m][cls:].reshape(config.grid(m)) for m in mods},
            "cls": {m: float(keys[m][0]) if cls else 0.0 for m in mods},
            "fusion": fusion, "kind": kind, "query": query, "layer": layer, "head": head}


def _query_row(rows: np.ndarray, start: int, count: int, cls: int) -> np.ndarray:
    """The CLS row of the tokens at [start, start + count), or (no CLS, `gap`) the mean of their rows."""
    return rows[start] if cls else rows[start:start + count].mean(axis=0)


def fusion_share(attention: Mapping[str, list], config: MBTConfig, batch: int = 0) -> dict[str, list[float]]:
    """Per modality, per layer: the share of its CLS attention (heads averaged) spent outside its own tokens:
    on the fusion tokens in bottleneck layers, on other modalities' tokens in cross- and self-attention layers."""
    mods, _, total = stream_layers(attention, config)
    out: dict[str, list[float]] = {m: [] for m in mods}
    for layer in range(total):
        for m in mods:
            row = attention_row(attention, config, layer, ("cls", m), "mean", batch)
            outside = sum(float(row["maps"][s].sum()) + row["cls"][s] for s in mods if s != m)
            out[m].append(outside + (float(row["fusion"].sum()) if row["fusion"] is not None else 0.0))
    return out
