"""softmax(QKᵀ/√d)V without returning the weights (Eq. 2's MSA core), by the implementation the config names.

`explicit` (the model's own einsum path, the only one that returns the weights or applies attention
dropout) is handled in `model.py`; here: `xla` and `cudnn` (`jax.nn.dot_product_attention`), and
`per_head`, one head at a time with a hand-written backward. XLA on CPU runs the (batch, heads)-batched
products of the fused path far below its matmul rate; per head they are plain matrix products, about 3x
faster forward and backward at the paper's 1,573 RGB tokens (`benchmarks/RESULTS.md`). `auto` is
`per_head` on CPU and jax's own choice (`implementation=None`) elsewhere.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = Any


def resolve(impl: str) -> str | None:
    """The implementation `auto` stands for on this backend (None: jax.nn.dot_product_attention chooses)."""
    if impl != "auto":
        return impl
    return "per_head" if jax.default_backend() == "cpu" else None


def _heads_first(x: Array) -> Array:
    return jnp.moveaxis(x, 2, 0)  # (batch, tokens, heads, d) -> (heads, batch, tokens, d)


def _probs(q: Array, k: Array, scale: float) -> Array:
    # Logits and softmax in float32 whatever the compute dtype (accepted mixed-precision practice).
    logits = jnp.einsum("bqd,bkd->bqk", q, k, preferred_element_type=jnp.float32) * scale
    return jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def per_head_attention(q: Array, k: Array, v: Array, scale: float) -> Array:
    """Attention of (batch, tokens, heads, d) arrays computed head by head; output like `q`."""
    def head(args):
        qh, kh, vh = args
        return jnp.einsum("bqk,bkd->bqd", _probs(qh, kh, scale).astype(vh.dtype), vh)

    return jnp.moveaxis(jax.lax.map(head, tuple(map(_heads_first, (q, k, v)))), 0, 2)


def _forward(q, k, v, scale):
    out = per_head_attention(q, k, v, scale)
    return out, (q, k, v, out)


def _backward(scale, residuals, d_out):
    # The weights are recomputed per head rather than stored: with O = PV and S = scale·QKᵀ,
    # dV = PᵀdO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)), dQ = scale·dS K, dK = scale·dSᵀQ.
    def head(args):
        qh, kh, vh, oh, doh = args
        p = _probs(qh, kh, scale)
        f32 = lambda x: x.astype(jnp.float32)
        dv = jnp.einsum("bqk,bqd->bkd", p, f32(doh))
        dp = jnp.einsum("bqd,bkd->bqk", f32(doh), f32(vh))
        ds = p * (dp - jnp.sum(f32(doh) * f32(oh), axis=-1, keepdims=True)) * scale
        dq, dk = jnp.einsum("bqk,bkd->bqd", ds, f32(kh)), jnp.einsum("bqk,bqd->bkd", ds, f32(qh))
        return dq.astype(qh.dtype), dk.astype(kh.dtype), dv.astype(vh.dtype)

    grads = jax.lax.map(head, tuple(map(_heads_first, (*residuals, d_out))))
    return tuple(jnp.moveaxis(g, 0, 2) for g in grads)


per_head_attention.defvjp(_forward, _backward)


def fused_attention(q: Array, k: Array, v: Array, impl: str) -> Array:
    """softmax(q kᵀ/√d) v for (batch, tokens, heads, d) arrays by `impl` (not `explicit`)."""
    scale = 1.0 / float(q.shape[-1]) ** 0.5
    chosen = resolve(impl)
    if chosen == "per_head":
        return per_head_attention(q, k, v, scale)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=chosen)
