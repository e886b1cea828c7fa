"""MBT model: shapes, the paper's information-flow properties (Sec. 3.2), parameter independence."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from mbt_core import MBT, MBTConfig, dummy_inputs
from mbt_core.model.model import param_suffix

FUSIONS = ["bottleneck", "cross_attention", "self_attention"]


def micro(**kw) -> MBTConfig:
    return MBTConfig.preset("micro", **kw)


def random_inputs(cfg, batch=2, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(cfg.modalities))
    return {m: jax.random.normal(k, x.shape) for (m, x), k in zip(dummy_inputs(cfg, batch).items(), keys)}


def init(cfg, seed=0):
    """Parameters with every leaf random (zero-initialised heads would hide information flow)."""
    params = MBT(cfg).init(jax.random.PRNGKey(seed), dummy_inputs(cfg, 1), train=False)["params"]
    flat = flatten_dict(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(flat))
    return unflatten_dict({k: v + 0.1 * jax.random.normal(kk, v.shape) for (k, v), kk in zip(flat.items(), keys)})


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_shapes_every_variant(fusion, classifier):
    cfg = micro(fusion=fusion, classifier=classifier)
    params = init(cfg)
    logits, aux = MBT(cfg).apply({"params": params}, random_inputs(cfg), train=False, capture_attention=True)
    assert logits.shape == (2, 5)
    assert set(aux["per_modality"]) == {"spec", "rgb"}
    n = {m: cfg.num_tokens(m) for m in cfg.modalities}
    total = sum(n.values())
    for m in cfg.modalities:
        maps = aux["attention"][m]
        assert maps[0].shape == (2, cfg.num_heads, n[m], n[m])
        np.testing.assert_allclose(np.asarray(maps[0]).sum(-1), 1.0, rtol=1e-5)
    if fusion == "bottleneck":
        assert aux["attention"]["rgb"][1].shape == (2, 4, n["rgb"] + cfg.num_fusion_tokens, n["rgb"] + 2)
    elif fusion == "cross_attention":
        assert aux["attention"]["rgb"][1].shape == (2, 4, n["rgb"], total)
    else:
        assert len(aux["attention"]["rgb"]) == 1 and aux["attention"]["joint"][0].shape == (2, 4, total, total)


def test_paper_b16_shapes_without_computing():
    cfg = MBTConfig.preset("paper-b16")
    assert (cfg.num_patches("rgb"), cfg.num_patches("spec")) == (1568, 400)
    model = MBT(cfg)
    x = dummy_inputs(cfg, 2)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1569, 768)
    assert params["Transformer"]["posembed_input_spectrogram"]["pos_embedding"].shape == (1, 401, 768)
    assert params["bottleneck"].shape == (1, 4, 768)
    out = jax.eval_shape(lambda p: model.apply({"params": p}, x, train=False), params)
    assert out[0].shape == (2, 527)
    # The official geometry matches the released checkpoint's parameter shapes.
    official = MBTConfig.preset("official-audioset")
    p = jax.eval_shape(lambda: MBT(official).init(jax.random.PRNGKey(0), dummy_inputs(official, 1), train=False))
    flat = {"/".join(k): v.shape for k, v in flatten_dict(p["params"]).items()}
    from shared import shared_path
    rows = shared_path("reference", "scenic_mbt", "vit_b_param_shapes.tsv").read_text().split("\n")
    stored = {k: tuple(int(s) for s in v.strip("()").split(",") if s.strip()) for k, v in
              (r.split("\t") for r in rows if r.strip())}
    assert flat == stored


def _copy_shared_into_modalities(shared_params, cfg):
    """Cross-attention parameters whose per-modality blocks all equal the shared ones."""
    p = dict(shared_params)
    t = dict(p["Transformer"])
    for layer in range(cfg.num_layers):
        block = t.pop(f"encoderblock_{layer}")
        for m in cfg.modalities:
            t[f"encoderblock_{layer}{param_suffix(m)}"] = block
    p["Transformer"] = t
    return p


@pytest.mark.parametrize("fusion_layer", [0, 1, 2])
def test_cross_attention_with_equal_weights_equals_self_attention(fusion_layer):
    # The note under Eq. 6: with the same weights for both modalities, cross-attention is vanilla fusion.
    shared = micro(fusion="self_attention", fusion_layer=fusion_layer)
    params = init(shared)
    x = random_inputs(shared)
    want, _ = MBT(shared).apply({"params": params}, x, train=False)
    cross = shared.replace(fusion="cross_attention")
    got, _ = MBT(cross).apply({"params": _copy_shared_into_modalities(params, cross)}, x, train=False)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _official_cross_attention_block(block_params, own, other, cfg):
    """The official formulation: the block runs over [other, own] and keeps its own rows."""
    from mbt_core.model.model import EncoderBlock
    blk = EncoderBlock(cfg.num_heads, cfg.mlp_dim)
    y, _ = blk.apply({"params": block_params}, jnp.concatenate([other, own], axis=1), None, True, False)
    return y[:, other.shape[1]:]


def test_cross_attention_equals_official_joint_sequence_block():
    from mbt_core.model.model import EncoderBlock
    cfg = micro()
    key = jax.random.PRNGKey(3)
    own, other = jax.random.normal(key, (2, 5, 32)), jax.random.normal(jax.random.PRNGKey(4), (2, 7, 32))
    blk = EncoderBlock(cfg.num_heads, cfg.mlp_dim)
    params = init_block = blk.init(key, own, None, True, False)["params"]
    params = jax.tree_util.tree_map(lambda v: v + 0.1 * jax.random.normal(key, v.shape), init_block)
    ours, _ = blk.apply({"params": params}, own, jnp.concatenate([own, other], axis=1), True, False)
    np.testing.assert_allclose(ours, _official_cross_attention_block(params, own, other, cfg), atol=1e-5)


def _spec_tokens_jacobian(cfg, layer, params, x, **kw):
    model = MBT(cfg, **kw)

    def spec_tokens(rgb):
        _, state = model.apply({"params": params}, {**x, "rgb": rgb}, train=False, mutable=["intermediates"])
        return state["intermediates"]["Transformer"][f"layer_{layer}/spec"][0]

    return np.asarray(jax.jacrev(spec_tokens)(x["rgb"]))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_no_information_crosses_below_fusion_layer(fusion):
    cfg = micro(num_layers=3, fusion=fusion, fusion_layer=1)
    params, x = init(cfg), random_inputs(cfg, batch=1)
    # With bottlenecks the first fused layer reads the learned fusion tokens (Eq. 8), so RGB reaches
    # the spectrogram stream one layer later than with attention fusion.
    first_crossing = cfg.fusion_layer + int(fusion == "bottleneck")
    for layer in range(first_crossing):
        assert not np.any(_spec_tokens_jacobian(cfg, layer, params, x)), f"layer {layer} sees RGB"
    assert np.abs(_spec_tokens_jacobian(cfg, first_crossing, params, x)).max() > 1e-6


def test_bottleneck_information_crosses_only_through_fusion_tokens():
    cfg = micro(num_layers=3, fusion_layer=1)
    params, x = init(cfg), random_inputs(cfg, batch=1)
    assert np.abs(_spec_tokens_jacobian(cfg, 2, params, x)).max() > 1e-6
    assert not np.any(_spec_tokens_jacobian(cfg, 2, params, x, fusion_stop_gradient=True))


def test_asymmetric_update_chains_modalities_within_a_layer():
    # Order (spec, rgb): rgb reads what spec wrote in the same layer, so spec's tokens reach rgb's
    # stream already at L_f; with the mean update (Eq. 9) they reach it one layer later.
    cfg = micro(num_layers=3, fusion_layer=1, bottleneck_update="asymmetric")
    params, x = init(cfg), random_inputs(cfg, batch=1)

    def rgb_jacobian(c, layer):
        def rgb_tokens(spec):
            _, st = MBT(c).apply({"params": params}, {**x, "spec": spec}, train=False, mutable=["intermediates"])
            return st["intermediates"]["Transformer"][f"layer_{layer}/rgb"][0]
        return np.asarray(jax.jacrev(rgb_tokens)(x["spec"]))

    assert np.abs(rgb_jacobian(cfg, 1)).max() > 1e-6
    assert not np.any(rgb_jacobian(cfg.replace(bottleneck_update="mean"), 1))
    # spec itself still reads only the incoming (learned) tokens at L_f.
    assert not np.any(_spec_tokens_jacobian(cfg, 1, params, x))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_late_fusion_equals_mean_of_unimodal_models(fusion):
    cfg = micro(fusion=fusion, fusion_layer=2)
    params, x = init(cfg), random_inputs(cfg)
    model = MBT(cfg)
    joint, _ = model.apply({"params": params}, x, train=False)
    alone = [model.apply({"params": params}, {m: x[m]}, train=False)[0] for m in cfg.modalities]
    np.testing.assert_allclose(joint, (alone[0] + alone[1]) / 2, atol=1e-6)


def test_fuse_at_eval_false_evaluates_unimodally_but_trains_fused():
    cfg = micro(fuse_at_eval=False)
    params, x = init(cfg), random_inputs(cfg)
    late = MBT(cfg.replace(fusion_layer=cfg.num_layers))
    got, _ = MBT(cfg).apply({"params": params}, x, train=False)
    want, _ = late.apply({"params": params}, x, train=False)
    np.testing.assert_allclose(got, want, atol=1e-6)
    trained, _ = MBT(cfg).apply({"params": params}, x, train=True)
    assert np.abs(trained - want).max() > 1e-5


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_layer_and_modality_has_its_own_parameters(fusion):
    cfg = micro(num_layers=3, fusion=fusion)
    params = MBT(cfg).init(jax.random.PRNGKey(0), dummy_inputs(cfg, 1), train=False)["params"]
    blocks = {k: v for k, v in params["Transformer"].items() if k.startswith("encoderblock")}
    expected = cfg.num_layers if fusion == "self_attention" else cfg.num_layers * 2
    assert len(blocks) == expected
    kernels = [np.asarray(b["MultiHeadDotProductAttention_0"]["query"]["kernel"]) for b in blocks.values()]
    for i in range(len(kernels)):
        for j in range(i):
            assert not np.allclose(kernels[i], kernels[j])


def test_forward_changes_neither_parameters_nor_inputs():
    cfg = micro(dropout=0.1, stochastic_depth=0.2)
    params, x = init(cfg), random_inputs(cfg)
    params_before, x_before = copy.deepcopy(jax.device_get(params)), {k: np.array(v) for k, v in x.items()}
    keys_before = list(x)
    MBT(cfg).apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert list(x) == keys_before
    for k in x:
        np.testing.assert_array_equal(x[k], x_before[k])
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(params), params_before)


def test_dropout_rng_needed_only_in_training():
    cfg = micro(dropout=0.1, stochastic_depth=0.3)
    params, x = init(cfg), random_inputs(cfg)
    model = MBT(cfg)
    model.apply({"params": params}, x, train=False)  # no rng needed
    with pytest.raises(Exception, match="dropout"):
        model.apply({"params": params}, x, train=True)
    a, _ = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    b, _ = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert np.abs(a - b).max() > 0


def test_stochastic_depth_is_linear_over_depth_and_unscaled():
    from mbt_core.model.model import layer_drop_rate
    cfg = micro(num_layers=4, stochastic_depth=0.3)
    assert [layer_drop_rate(cfg, i) for i in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_dict_heads_split_shared_projection_in_order():
    cfg = micro(num_classes={"noun": 3, "verb": 2})
    params, x = init(cfg), random_inputs(cfg)
    logits, aux = MBT(cfg).apply({"params": params}, x, train=False)
    assert list(logits) == ["noun", "verb"] and logits["noun"].shape == (2, 3) and logits["verb"].shape == (2, 2)
    kernel = params["output_projection"]["kernel"]
    assert kernel.shape == (32, 5)
    full = MBT(micro(num_classes=5)).apply({"params": params}, x, train=False)[0]
    np.testing.assert_allclose(jnp.concatenate([logits["noun"], logits["verb"]], -1), full, atol=1e-6)


def test_positional_embedding_resized_only_when_token_count_differs():
    from mbt_core.model.model import resize_posemb
    cfg = micro(rgb_frames=2)
    params = init(cfg)
    x = random_inputs(cfg)
    x_long = {**x, "rgb": jnp.concatenate([x["rgb"], x["rgb"]], axis=1)}  # 4 frames, grid (4, 2, 2)
    logits, _ = MBT(cfg).apply({"params": params}, x_long, train=False)
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
    # Bilinear resize along time of a posemb that is constant over time keeps it constant.
    grid = jnp.tile(jax.random.normal(jax.random.PRNGKey(0), (1, 1, 4, 8)), (1, 2, 1, 1)).reshape(1, 8, 8)
    posemb = jnp.concatenate([jnp.ones((1, 1, 8)), grid], axis=1)
    out = resize_posemb(posemb, (2, 2, 2), (4, 2, 2), has_cls=True)
    np.testing.assert_allclose(out[:, 0], 1.0)
    np.testing.assert_allclose(out[0, 1:].reshape(4, 4, 8), np.tile(np.asarray(grid[0, :4])[None], (4, 1, 1)),
                               atol=1e-6)


@pytest.mark.parametrize("field, kw, match", [
    ("fusion_layer", dict(fusion_layer=3), "fusion_layer"),
    ("num_bottlenecks", dict(num_bottlenecks=0), "num_bottlenecks"),
    ("num_heads", dict(num_heads=5), "num_heads"),
    ("image_size", dict(image_size=9), "rgb_frames/image_size"),
    ("spec_seconds", dict(spec_seconds=0.1), "spec_seconds"),
    ("fusion", dict(fusion="sum"), "fusion"),
])
def test_impossible_config_names_the_field(field, kw, match):
    with pytest.raises(ValueError, match=match):
        micro(**kw)


def test_late_fusion_allows_zero_bottlenecks_and_bad_inputs_are_named():
    micro(num_bottlenecks=0, fusion_layer=2)
    cfg = micro()
    params = init(cfg)
    with pytest.raises(ValueError, match="'rgb'"):
        MBT(cfg).apply({"params": params}, {**random_inputs(cfg), "rgb": jnp.zeros((1, 2, 9, 8, 3))}, train=False)
    with pytest.raises(ValueError, match="audio"):
        MBT(cfg).apply({"params": params}, {"audio": jnp.zeros((1, 16, 8))}, train=False)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_third_modality_joins_every_fusion(fusion):
    cfg = micro(modalities=("spec", "rgb", "flow"), fusion=fusion)
    params, x = init(cfg), random_inputs(cfg)
    assert x["flow"].shape[-1] == 2 and "embedding_flow" in params
    logits, aux = MBT(cfg).apply({"params": params}, x, train=False)
    assert set(aux["per_modality"]) == {"spec", "rgb", "flow"}
    np.testing.assert_allclose(logits, sum(aux["per_modality"].values()) / 3, atol=1e-6)


def _loss_and_grads(cfg, params, x, **kw):
    model = MBT(cfg, **kw)

    def loss(p):
        logits, aux = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(7)})
        return jnp.mean(logits ** 2) + sum(jnp.mean(v ** 2) for v in aux["per_modality"].values())

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("impl", ["per_head", "xla"])
def test_fast_attention_equals_explicit_weights_path(fusion, impl):
    # The explicit softmax(QKᵀ)V (the path checked against the official model) is the reference.
    cfg = micro(fusion=fusion, stochastic_depth=0.3, attention_impl="explicit")
    params, x = init(cfg), random_inputs(cfg)
    fast = cfg.replace(attention_impl=impl)
    want, _ = MBT(cfg).apply({"params": params}, x, train=False)
    got, aux = MBT(fast).apply({"params": params}, x, train=False)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert "attention" not in aux
    _, captured = MBT(fast).apply({"params": params}, x, train=False, capture_attention=True)
    assert all(w.ndim == 4 for ws in captured["attention"].values() for w in ws)  # weights still on request
    (loss_want, g_want), (loss_got, g_got) = _loss_and_grads(cfg, params, x), _loss_and_grads(fast, params, x)
    np.testing.assert_allclose(loss_got, loss_want, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_want)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_computes_in_bfloat16_within_its_precision():
    cfg = micro(fusion="bottleneck")
    params, x = init(cfg), random_inputs(cfg)
    want, _ = MBT(cfg).apply({"params": params}, x, train=False)
    (got, aux), state = MBT(cfg, dtype=jnp.bfloat16).apply({"params": params}, x, train=False,
                                                          capture_attention=True, mutable=["intermediates"])
    tokens = jax.tree_util.tree_leaves(state["intermediates"])
    assert len(tokens) == cfg.num_layers * len(cfg.modalities)
    assert all(t.dtype == jnp.bfloat16 for t in tokens)
    assert all(w.dtype == jnp.bfloat16 for ws in aux["attention"].values() for w in ws)
    assert got.dtype == jnp.bfloat16
    got = np.asarray(got, np.float32)
    # Rounded, not promoted back to float32 ...
    assert np.max(np.abs(got - want)) > 1e-6
    # ... and within bfloat16's precision: 8 significant bits (relative step 2^-8 = 0.4%) per operation;
    # through two layers that is a few percent of the logits' scale.
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.max(np.abs(want))))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_remat_gives_the_same_loss_and_gradients(fusion):
    cfg = micro(fusion=fusion, stochastic_depth=0.3, dropout=0.1)
    params, x = init(cfg), random_inputs(cfg)
    remat = cfg.replace(remat=True)
    assert jax.tree_util.tree_structure(MBT(remat).init(jax.random.PRNGKey(0), x, train=False)["params"]) == \
        jax.tree_util.tree_structure(params)
    (loss_want, g_want), (loss_got, g_got) = _loss_and_grads(cfg, params, x), _loss_and_grads(remat, params, x)
    np.testing.assert_allclose(loss_got, loss_want, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_want)):
        np.testing.assert_allclose(a, b, atol=1e-6)
