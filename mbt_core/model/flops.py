"""GFLOPs of any MBT variant per clip (batch 1), one multiply-add = one FLOP as the official counter.

Two conventions: `"efficient"` counts what this implementation computes; `"official"` counts what the
official Scenic code computes (cross-attention runs each modality's whole block over the joint
sequence; the token classifier creates B+1 fusion tokens). The official counter is XLA's cost analysis
halved, so elementwise work (softmax, GELU, LayerNorm, residuals) is counted too, at the per-element
costs below (calibrated against `compile().cost_analysis()`; see tests/test_flops.py).
"""
from __future__ import annotations

import math

from mbt_core.config import FUSIONS, MBTConfig

CONVENTIONS = ("efficient", "official")
# XLA flops per element, halved like multiply-adds: softmax (max, subtract, sum, divide, scale),
# tanh-GELU, LayerNorm, residual adds.
_SOFTMAX, _GELU, _LAYERNORM, _RESIDUAL = 2.5, 4.0, 4.0, 0.5


def _block(dim: int, mlp: int, heads: int, n_q: int, n_kv: int, n_proj_kv: int) -> dict[str, float]:
    """Multiply-adds of one pre-LN block: n_q queries over n_kv keys, keys/values projected for n_proj_kv."""
    attention = (n_q + 2 * n_proj_kv) * dim * dim + 2 * n_q * n_kv * dim + n_q * dim * dim
    attention += _SOFTMAX * heads * n_q * n_kv + _LAYERNORM * n_proj_kv * dim + _RESIDUAL * n_q * dim
    mlp_cost = 2 * n_q * dim * mlp + _GELU * n_q * mlp + _LAYERNORM * n_q * dim + _RESIDUAL * n_q * dim
    return {"attention": attention, "mlp": mlp_cost}


def flops_breakdown(config: MBTConfig, convention: str = "efficient") -> dict[str, float]:
    """GFLOPs per clip by part: embedding, attention, MLP, fusion (the cost above unimodal), head."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r} is not one of {CONVENTIONS}")
    cfg, dim = config, config.hidden_size
    mods = cfg.modalities
    n = {m: cfg.num_tokens(m) for m in mods}
    total = sum(n.values())
    fsn = cfg.num_fusion_tokens
    if convention == "official" and cfg.classifier == "token":
        fsn = cfg.num_bottlenecks + 1
    parts = {"embedding": 0.0, "attention": 0.0, "mlp": 0.0, "fusion": 0.0, "head": 0.0}
    for m in mods:
        parts["embedding"] += cfg.num_patches(m) * math.prod(cfg.patch_shape(m)) * cfg.channels(m) * dim
    block = lambda q, kv, proj: _block(dim, cfg.mlp_dim, cfg.num_heads, q, kv, proj)
    unimodal = {m: block(n[m], n[m], n[m]) for m in mods}
    for layer in range(cfg.num_layers):
        for m in mods:
            parts["attention"] += unimodal[m]["attention"]
            parts["mlp"] += unimodal[m]["mlp"]
        if not cfg.is_fused(layer):
            continue
        if cfg.fusion == "bottleneck":
            costs = [block(n[m] + fsn, n[m] + fsn, n[m] + fsn) for m in mods]
        elif cfg.fusion == "self_attention":
            costs = [block(total, total, total)]
        elif convention == "official":
            costs = [block(total, total, total) for _ in mods]
        else:
            costs = [block(n[m], total, total) for m in mods]
        parts["fusion"] += sum(c["attention"] + c["mlp"] for c in costs) - sum(
            unimodal[m]["attention"] + unimodal[m]["mlp"] for m in mods)
    parts["head"] = cfg.hidden_size * cfg.total_classes * (len(mods) if cfg.classifier == "token" else 1)
    parts["head"] += _LAYERNORM * total * dim
    return {k: v / 1e9 for k, v in parts.items()}


def gflops(config: MBTConfig, convention: str = "efficient") -> float:
    """Total GFLOPs per clip (batch 1) of a config under a counting convention."""
    return sum(flops_breakdown(config, convention).values())


def flops_table(config: MBTConfig, convention: str = "official") -> dict[str, list[float]]:
    """GFLOPs over L_f = 0..L for every fusion strategy (the layout of the paper's Fig. 3, right)."""
    return {fusion: [gflops(config.replace(fusion=fusion, fusion_layer=lf), convention)
                     for lf in range(config.num_layers + 1)] for fusion in FUSIONS}
