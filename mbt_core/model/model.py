"""The Multimodal Bottleneck Transformer (Sec. 3) in Flax Linen, with the official parameter tree.

Parameter paths follow Scenic's `projects/mbt/model.py`, so official MBT checkpoints and ImageNet-21K
ViT checkpoints load by name: `embedding{sfx}`, `cls{m}`, `bottleneck`, `output_projection`,
`Transformer/posembed_input{sfx}`, `Transformer/encoderblock_{l}{sfx}`, `Transformer/encoder_norm`,
where `sfx` is "" for `rgb` and `_spectrogram` for `spec`.

`MBT(config).apply({"params": p}, inputs, train=...)` returns `(logits, aux)` (big_vision idiom):
`aux["per_modality"][m]` holds modality m's own logits; `aux["attention"]` (only with
`capture_attention=True`) holds `{stream: [per layer (batch, heads, q, k)]}`. Per-layer tokens are
sown into the `intermediates` collection (`mutable=["intermediates"]` to read them).

`MBT(config, dtype=jnp.bfloat16)` computes activations and matmuls in bfloat16 from float32 parameters
(cast where used); LayerNorm statistics and the attention softmax stay float32.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mbt_core.config import MBTConfig, is_spectrogram
from mbt_core.model.attention import fused_attention

Array = Any
LN_EPS = 1e-6  # Flax's default; every LayerNorm of the official model uses it.


def param_suffix(modality: str) -> str:
    """Official name suffix of a modality's embedding, positional embedding and blocks."""
    if modality == "rgb":
        return ""
    return "_spectrogram" if modality == "spec" else f"_{modality}"


def cls_name(modality: str, config: MBTConfig) -> str:
    """Official name of a modality's CLS parameter (`cls` whenever the model has one modality)."""
    if modality == "rgb" or len(config.modalities) == 1:
        return "cls"
    return "clsspectrogram" if modality == "spec" else f"cls{modality}"


def dummy_inputs(config: MBTConfig, batch: int = 1, dtype=jnp.float32) -> dict[str, Array]:
    """Zero inputs of the right shapes for every modality of `config`."""
    out = {}
    for m in config.modalities:
        shape = config.input_shape(m)
        if is_spectrogram(m) and config.spec_channels == 1:
            shape = shape[:-1]  # (time, mel): the natural log-mel layout.
        out[m] = jnp.zeros((batch, *shape), dtype)
    return out


def layer_drop_rate(config: MBTConfig, layer: int) -> float:
    """Stochastic depth of a layer: linear over depth, 0 at the first layer, p at the last."""
    return config.stochastic_depth * layer / max(config.num_layers - 1, 1)


class Attention(nn.Module):
    """Multi-head dot-product attention (Flax layout); returns its weights on the explicit path, else None.

    The explicit path (softmax(QKᵀ)V materialised) runs when the weights are wanted, when attention
    dropout applies (jax.nn.dot_product_attention has none) or with `impl="explicit"`.
    """

    num_heads: int
    dropout: float = 0.0
    impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_q: Array, x_kv: Array, deterministic: bool, weights_wanted: bool) -> tuple[Array, Array]:
        dim = x_q.shape[-1]
        head_dim = dim // self.num_heads
        proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), kernel_init=nn.initializers.xavier_uniform(),
                                            dtype=self.dtype, name=name)
        dropping = self.dropout > 0 and not deterministic
        if not (weights_wanted or dropping or self.impl == "explicit"):
            out = fused_attention(proj("query")(x_q), proj("key")(x_kv), proj("value")(x_kv), self.impl)
            weights = None
        else:
            q = proj("query")(x_q) / jnp.asarray(math.sqrt(head_dim), self.dtype)
            k, v = proj("key")(x_kv), proj("value")(x_kv)
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
            weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
            attended = nn.Dropout(self.dropout)(weights, deterministic=False) if dropping else weights
            out = jnp.einsum("bhqk,bkhd->bqhd", attended, v)
        out = nn.DenseGeneral(dim, axis=(-2, -1), kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype,
                              name="out")(out)
        return out, weights


class MlpBlock(nn.Module):
    """Transformer MLP: Dense -> GELU (tanh approximation, as the official code) -> Dense."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        dense = lambda n, name: nn.Dense(n, kernel_init=nn.initializers.xavier_uniform(),
                                         bias_init=nn.initializers.normal(1e-6), dtype=self.dtype, name=name)
        y = nn.gelu(dense(self.mlp_dim, "Dense_0")(x), approximate=True)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = dense(x.shape[-1], "Dense_1")(y)
        return nn.Dropout(self.dropout)(y, deterministic=deterministic)


class EncoderBlock(nn.Module):
    """Pre-LN transformer layer (Eq. 2-3); with `kv` the queries read other tokens too (Eq. 6)."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_rate: float = 0.0
    rescale: bool = False
    attention_impl: str = "auto"
    dtype: Any = jnp.float32

    def _drop_path(self, y: Array, deterministic: bool) -> Array:
        # Stochastic depth as the official code: one Bernoulli keep per example and branch.
        if deterministic or self.drop_rate == 0.0:
            return y
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.drop_rate, (y.shape[0],) + (1,) * (y.ndim - 1))
        y = y * keep.astype(y.dtype)
        return y / (1.0 - self.drop_rate) if self.rescale else y

    @nn.compact
    def __call__(self, x: Array, kv: Array | None, deterministic: bool,
                 weights_wanted: bool) -> tuple[Array, Array | None]:
        # Positional flags only: nn.remat marks them static by position (`static_argnums`).
        norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_0")
        y = norm(x)
        # The official cross-attention normalises the joint sequence with this block's own LayerNorm.
        y_kv = y if kv is None else norm(kv)
        y, weights = Attention(self.num_heads, self.attention_dropout, self.attention_impl, self.dtype,
                               name="MultiHeadDotProductAttention_0")(y, y_kv, deterministic, weights_wanted)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        x = x + self._drop_path(y, deterministic)
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_1")(x)
        y = MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="MlpBlock_0")(y, deterministic)
        return x + self._drop_path(y, deterministic), weights


def resize_posemb(posemb: Array, old_grid: tuple[int, ...], new_grid: tuple[int, ...], has_cls: bool) -> Array:
    """Bilinear resize of a (1, [1+] prod(grid), D) positional embedding to another patch grid."""
    cls, grid = (posemb[:, :1], posemb[:, 1:]) if has_cls else (posemb[:, :0], posemb)
    grid = grid.reshape((*old_grid, posemb.shape[-1]))
    grid = jax.image.resize(grid, (*new_grid, posemb.shape[-1]), method="bilinear")
    return jnp.concatenate([cls, grid.reshape((1, -1, posemb.shape[-1]))], axis=1)


class PositionEmbedding(nn.Module):
    """Learned positional embedding `pos_embedding` of shape (1, tokens, D), N(0, 0.02)."""

    shape: tuple[int, int]

    @nn.compact
    def __call__(self) -> Array:
        return self.param("pos_embedding", nn.initializers.normal(0.02), (1, *self.shape))


class Transformer(nn.Module):
    """The fusion encoder: unimodal layers below L_f, fused layers from L_f on (Sec. 3.2)."""

    config: MBTConfig
    fusion_stop_gradient: bool = False
    dtype: Any = jnp.float32

    def _posemb(self, m: str, x: Array, grid: tuple[int, ...]) -> Array:
        cfg = self.config
        has_cls = cfg.classifier == "token"
        posemb = PositionEmbedding((cfg.num_tokens(m), cfg.hidden_size), name=f"posembed_input{param_suffix(m)}")()
        if posemb.shape[1] != x.shape[1]:
            posemb = resize_posemb(posemb, cfg.grid(m), grid, has_cls)
        return x + posemb.astype(self.dtype)

    def _block(self, layer: int, modality: str | None) -> EncoderBlock:
        cfg = self.config
        name = f"encoderblock_{layer}" + ("" if modality is None else param_suffix(modality))
        # Remat keeps each block's input and recomputes its inside in the backward pass (same parameters).
        block = nn.remat(EncoderBlock, static_argnums=(3, 4)) if cfg.remat else EncoderBlock
        return block(cfg.num_heads, cfg.mlp_dim, cfg.dropout, cfg.attention_dropout, layer_drop_rate(cfg, layer),
                     cfg.stochastic_depth_rescale, cfg.attention_impl, self.dtype, name=name)

    @nn.compact
    def __call__(self, tokens: Mapping[str, Array], grids: Mapping[str, tuple[int, ...]], fsn: Array | None,
                 *, train: bool, capture_attention: bool) -> tuple[dict[str, Array], dict[str, list]]:
        cfg = self.config
        mods = [m for m in cfg.modalities if m in tokens]
        det = not train
        x = {m: nn.Dropout(cfg.dropout)(self._posemb(m, tokens[m], grids[m]), deterministic=det) for m in mods}
        # fuse_at_eval=False reproduces `test_with_bottlenecks=False`: evaluation runs unimodally; so does
        # a call given only one of the modalities.
        fuse = len(mods) > 1 and (train or cfg.fuse_at_eval)
        fusion_layer = cfg.fused_layers.start if fuse else cfg.num_layers
        shared = cfg.fusion == "self_attention"
        attn: dict[str, list] = {}
        keep = (lambda s, w: attn.setdefault(s, []).append(w)) if capture_attention else (lambda s, w: None)
        run = lambda block, x, kv=None: block(x, kv, det, capture_attention)
        hold = jax.lax.stop_gradient if self.fusion_stop_gradient else (lambda a: a)
        for layer in range(cfg.num_layers):
            if shared:  # One block serves every modality (the official `share_encoder`).
                blocks = dict.fromkeys(mods, self._block(layer, None))
            else:
                blocks = {m: self._block(layer, m) for m in mods}
            if layer < fusion_layer:
                for m in mods:
                    x[m], w = run(blocks[m], x[m])
                    keep(m, w)
            elif cfg.fusion == "self_attention":  # Sec. 3.2.1: one joint sequence, shared weights.
                joint, w = run(blocks[mods[0]], jnp.concatenate([x[m] for m in mods], axis=1))
                keep("joint", w)
                x = dict(zip(mods, jnp.split(joint, np.cumsum([x[m].shape[1] for m in mods])[:-1], axis=1)))
            elif cfg.fusion == "cross_attention":  # Eq. 5-6: own queries and MLP, keys/values from all.
                kv = jnp.concatenate([x[m] for m in mods], axis=1)
                for m in mods:
                    x[m], w = run(blocks[m], x[m], kv)
                    keep(m, w)
            else:  # Eq. 7-9: modalities exchange information only through the fusion tokens.
                written = []
                for m in mods:
                    n = x[m].shape[1]
                    y, w = run(blocks[m], jnp.concatenate([x[m], hold(fsn)], axis=1))
                    keep(m, w)
                    x[m], out = y[:, :n], y[:, n:]
                    if cfg.bottleneck_update == "asymmetric":
                        fsn = out  # The next modality reads what this one wrote (our reading of the appendix).
                    written.append(out)
                if cfg.bottleneck_update == "mean":
                    fsn = jnp.mean(jnp.stack(written), axis=0)  # Eq. 9.
            for m in mods:
                self.sow("intermediates", f"layer_{layer}/{m}", x[m])
        norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="encoder_norm")
        return {m: norm(x[m]) for m in mods}, attn


class MBT(nn.Module):
    """Multimodal Bottleneck Transformer: patch embeddings (Eq. 1), fusion encoder, shared classifier."""

    config: MBTConfig
    fusion_stop_gradient: bool = False  # Analysis: hold fusion tokens fixed between layers.
    dtype: Any = jnp.float32  # Compute dtype (`train.compute_dtype`); parameters stay float32.

    def _embed(self, m: str, x: Array) -> tuple[Array, tuple[int, ...]]:
        cfg = self.config
        x = jnp.asarray(x, self.dtype)
        if is_spectrogram(m):
            if x.ndim == 3:
                x = x[..., None]
            if x.shape[-1] == 1 and cfg.spec_channels > 1:
                x = jnp.tile(x, (1, 1, 1, cfg.spec_channels))  # As the official pipeline tiles log-mel.
        want = cfg.channels(m)
        expected_ndim = 4 if is_spectrogram(m) else 5
        if x.ndim != expected_ndim or x.shape[-1] != want:
            raise ValueError(f"input {m!r}: expected (batch, {'time, mel' if is_spectrogram(m) else 'frames, H, W'}"
                             f", {want}) but got shape {tuple(x.shape)}")
        patch = cfg.patch_shape(m)
        for size, p in zip(x.shape[1:-1], patch):
            if size % p:
                raise ValueError(f"input {m!r}: shape {tuple(x.shape[1:-1])} is not divisible by patch {patch}")
        y = nn.Conv(cfg.hidden_size, patch, strides=patch, padding="VALID", dtype=self.dtype,
                    name=f"embedding{param_suffix(m)}")(x)
        grid = tuple(y.shape[1:-1])
        return y.reshape((y.shape[0], -1, cfg.hidden_size)), grid

    @nn.compact
    def __call__(self, inputs: Mapping[str, Array], *, train: bool,
                 capture_attention: bool = False) -> tuple[Any, dict[str, Any]]:
        cfg = self.config
        unknown = sorted(set(inputs) - set(cfg.modalities))
        if unknown or not inputs:
            raise ValueError(f"inputs {sorted(inputs)}: expected a non-empty subset of modalities {cfg.modalities}")
        mods = [m for m in cfg.modalities if m in inputs]
        tokens, grids = {}, {}
        for m in mods:
            tokens[m], grids[m] = self._embed(m, inputs[m])
            if cfg.classifier == "token":
                cls = self.param(cls_name(m, cfg), nn.initializers.zeros, (1, 1, cfg.hidden_size))
                cls = cls.astype(self.dtype)
                tokens[m] = jnp.concatenate([jnp.broadcast_to(cls, (tokens[m].shape[0], 1, cfg.hidden_size)),
                                             tokens[m]], axis=1)
        fsn = None
        if cfg.has_fusion_tokens:
            param = self.param("bottleneck", nn.initializers.normal(0.02), (1, cfg.fsn_tokens, cfg.hidden_size))
            batch = tokens[mods[0]].shape[0]
            fsn = jnp.broadcast_to(param.astype(self.dtype), (batch, *param.shape[1:]))
        encoded, attention = Transformer(cfg, self.fusion_stop_gradient, self.dtype, name="Transformer")(
            tokens, grids, fsn, train=train, capture_attention=capture_attention)
        head = nn.Dense(cfg.total_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="output_projection")
        if cfg.classifier == "token":
            per_modality = {m: head(encoded[m][:, 0]) for m in mods}
            logits = jnp.mean(jnp.stack([per_modality[m] for m in mods]), axis=0)
        else:  # `gap`: all modalities' tokens averaged jointly, as the official model.
            per_modality = {m: head(jnp.mean(encoded[m], axis=1)) for m in mods}
            logits = head(jnp.mean(jnp.concatenate([encoded[m] for m in mods], axis=1), axis=1))
        aux = {"per_modality": {m: split_heads(v, cfg) for m, v in per_modality.items()}}
        if capture_attention:
            aux["attention"] = attention
        return split_heads(logits, cfg), aux


def split_heads(logits: Array, config: MBTConfig) -> Any:
    """Split the shared projection's columns into named heads in the config's order (or return as is)."""
    heads = config.heads
    if not heads:
        return logits
    ends = np.cumsum(list(heads.values()))
    return dict(zip(heads, jnp.split(logits, ends[:-1], axis=-1)))
