"""mbt_core.analysis.rollout against a loop-based NumPy reference, a token-state simulator and closed forms."""
import math

import numpy as np
import pytest

from mbt_core.analysis.rollout import attention_rollout, mbt_rollout, tightness
from mbt_core.config import MBTConfig


def _stochastic(rng, shape):
    a = rng.random(shape) + 1e-3
    return a / a.sum(-1, keepdims=True)


def _reference_rollout(attn, head_fusion="mean", discard_ratio=0.0, start_layer=0):
    """Abnar & Zuidema's rollout, written out with loops, for one (layers, heads, T, T) stream."""
    layers, _, t, _ = attn.shape
    result = np.eye(t)
    for layer in range(start_layer, layers):
        a = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion](attn[layer], axis=0)
        drop = int(discard_ratio * (t - 1))
        for i in range(t):
            for _, j in sorted((a[i, j], j) for j in range(t) if j != i)[:drop]:
                a[i, j] = 0.0
            a[i] = a[i] / a[i].sum()
        result = (0.5 * a + 0.5 * np.eye(t)) @ result
    return result


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("start_layer", [0, 2])
def test_rollout_matches_loop_reference(head_fusion, discard_ratio, start_layer):
    attn = _stochastic(np.random.default_rng(0), (4, 3, 7, 7))
    out = attention_rollout(attn, head_fusion, discard_ratio, start_layer)
    np.testing.assert_allclose(out, _reference_rollout(attn, head_fusion, discard_ratio, start_layer), atol=1e-12)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-12)
    assert (out >= 0).all()


def test_one_layer_is_half_attention_half_identity():
    attn = _stochastic(np.random.default_rng(1), (1, 1, 5, 5))
    np.testing.assert_allclose(attention_rollout(attn), 0.5 * attn[0, 0] + 0.5 * np.eye(5), atol=1e-15)


def test_identity_attention_rolls_out_to_identity():
    attn = np.broadcast_to(np.eye(6), (3, 2, 6, 6))
    np.testing.assert_array_equal(attention_rollout(attn), np.eye(6))
    np.testing.assert_array_equal(attention_rollout(attn, discard_ratio=0.5), np.eye(6))


def test_discard_keeps_the_diagonal_and_rows_stochastic():
    t = 6
    a = _stochastic(np.random.default_rng(2), (1, 1, t, t))
    a[0, 0][np.diag_indices(t)] = 1e-6  # the diagonal is every row's smallest weight
    a = a / a.sum(-1, keepdims=True)
    out = attention_rollout(a, discard_ratio=0.5)  # drops floor(0.5 * 5) = 2 off-diagonal weights per row
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-12)
    assert (np.diag(out) > 0.5).all()
    assert ((out == 0).sum(-1) == 2).all()
    kept = out - 0.5 * np.eye(t)
    for i in range(t):  # the kept off-diagonal weights are the row's 3 largest, rescaled to half the row
        largest = np.argsort(np.where(np.eye(t)[i] > 0, -1, a[0, 0, i]))[-3:]
        row = a[0, 0, i]
        np.testing.assert_allclose(kept[i, largest], 0.5 * row[largest] / (row[largest].sum() + row[i]))


def test_batched_equals_per_example_and_jax_arrays_work():
    import jax.numpy as jnp

    attn = _stochastic(np.random.default_rng(3), (3, 2, 4, 5, 5))
    batched = attention_rollout(jnp.asarray(attn, jnp.float32), "max", 0.25)
    for b in range(3):
        np.testing.assert_allclose(batched[b], attention_rollout(attn[b].astype(np.float32), "max", 0.25), atol=1e-12)
    assert batched.shape == (3, 5, 5)


def test_rollout_rejects_bad_input():
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(np.ones((1, 1, 2, 2)) / 2, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout(np.ones((1, 1, 2, 2)) / 2, discard_ratio=1.0)
    with pytest.raises(ValueError, match="shape"):
        attention_rollout(np.ones((1, 2, 3)))


# ----- MBT's joint graph -----

CFG = MBTConfig.preset("micro", num_layers=3, fusion_layer=1, num_bottlenecks=2)  # 9 tokens per modality


def _fake_attention(cfg, seed=0, batch=2, heads=3, fused=True):
    """Random row-stochastic `aux["attention"]` with the model's shapes."""
    rng = np.random.default_rng(seed)
    n = {m: cfg.num_tokens(m) for m in cfg.modalities}
    total, f = sum(n.values()), cfg.num_fusion_tokens
    fusion_layer = cfg.fusion_layer if fused else cfg.num_layers
    out = {m: [] for m in cfg.modalities}
    for layer in range(cfg.num_layers):
        if layer < fusion_layer:
            for m in cfg.modalities:
                out[m].append(_stochastic(rng, (batch, heads, n[m], n[m])))
        elif cfg.fusion == "self_attention":
            out.setdefault("joint", []).append(_stochastic(rng, (batch, heads, total, total)))
        else:
            for m in cfg.modalities:
                shape = (n[m], total) if cfg.fusion == "cross_attention" else (n[m] + f, n[m] + f)
                out[m].append(_stochastic(rng, (batch, heads, *shape)))
    return out


def _hat(a, offset=0):
    """(A + I)/2 for a row-stochastic, heads-averaged A whose query i is key offset + i."""
    return 0.5 * a + 0.5 * np.eye(*a.shape, offset)


def _simulate(attention, cfg, b):
    """Propagate each token's contribution vector through the model's mixing, stream by stream."""
    mods = [m for m in cfg.modalities if m in attention]
    n = [cfg.num_tokens(m) for m in mods]
    offsets = np.r_[0, np.cumsum(n)]
    f = cfg.num_fusion_tokens if cfg.fusion == "bottleneck" else 0
    eye = np.eye(offsets[-1] + f)
    x = {m: eye[offsets[i]:offsets[i + 1]] for i, m in enumerate(mods)}
    fsn = eye[offsets[-1]:]
    own_layers = len(attention[mods[0]])
    for layer in range(own_layers + len(attention.get("joint", []))):
        if layer >= own_layers:
            a = attention["joint"][layer - own_layers][b].mean(0)
            mixed = _hat(a) @ np.concatenate([x[m] for m in mods])
            x = {m: mixed[offsets[i]:offsets[i + 1]] for i, m in enumerate(mods)}
            continue
        inputs = np.concatenate([x[m] for m in mods])
        reads, written, new = fsn, [], {}
        for i, m in enumerate(mods):
            a = attention[m][layer][b].mean(0)
            if a.shape == (n[i], n[i]):
                new[m] = _hat(a) @ x[m]
            elif a.shape[1] == offsets[-1]:
                new[m] = _hat(a, offsets[i]) @ inputs
            else:
                out = _hat(a) @ np.concatenate([x[m], reads])
                new[m] = out[:n[i]]
                written.append(out[n[i]:])
                if cfg.bottleneck_update == "asymmetric":
                    reads = out[n[i]:]
        x = new
        if written:
            fsn = np.mean(written, axis=0) if cfg.bottleneck_update == "mean" else reads
    return np.concatenate([*(x[m] for m in mods), fsn])


VARIANTS = [dict(fusion="bottleneck"), dict(fusion="bottleneck", bottleneck_update="asymmetric"),
            dict(fusion="cross_attention"), dict(fusion="self_attention"),
            dict(fusion="bottleneck", classifier="gap"), dict(fusion="self_attention", fusion_layer=0),
            dict(fusion="bottleneck", fusion_layer=0, bottleneck_update="asymmetric", extra_fusion_token=True)]


@pytest.mark.parametrize("changes", VARIANTS, ids=lambda c: "-".join(map(str, c.values())))
def test_mbt_rollout_matches_token_simulator(changes):
    cfg = CFG.replace(**changes)
    attention = _fake_attention(cfg, seed=4)
    out = mbt_rollout(attention, cfg)
    for b in range(2):
        np.testing.assert_allclose(out["joint"][b], _simulate(attention, cfg, b), atol=1e-12)
    np.testing.assert_allclose(out["joint"].sum(-1), 1.0, atol=1e-12)
    # Readouts: CLS row (or the mean of the modality's rows with `gap`) over the patch columns.
    cls = int(cfg.classifier == "token")
    p = [cfg.num_patches(m) for m in cfg.modalities]
    assert out["cross_modal"].shape == (2, 2, sum(p))
    spec, rgb = out["tokens"]["spec"], out["tokens"]["rgb"]
    spec_readout = out["joint"][:, spec.start] if cls else out["joint"][:, spec].mean(1)
    np.testing.assert_allclose(out["cls_to_patches"]["spec"], spec_readout[:, spec.start + cls:spec.stop])
    np.testing.assert_array_equal(out["cross_modal"][:, 0, :p[0]], 0.0)
    np.testing.assert_allclose(out["cross_modal"][:, 0, p[0]:], spec_readout[:, rgb.start + cls:rgb.stop])
    assert (out["cross_modal"][:, 0, p[0]:] > 0).all() and (out["cross_modal"][:, 1, :p[0]] > 0).all()


@pytest.mark.parametrize("fusion", ["bottleneck", "cross_attention", "self_attention"])
def test_no_crossing_for_late_fusion_or_unfused_layers(fusion):
    late = CFG.replace(fusion=fusion, fusion_layer=CFG.num_layers)
    out = mbt_rollout(_fake_attention(late, seed=5), late)
    np.testing.assert_array_equal(out["cross_modal"], 0.0)
    # A mid-fusion config evaluated unimodally (fuse_at_eval=False): only unfused shapes are given.
    mid = CFG.replace(fusion=fusion, fuse_at_eval=False)
    out = mbt_rollout(_fake_attention(mid, seed=6, fused=False), mid)
    np.testing.assert_array_equal(out["cross_modal"], 0.0)
    np.testing.assert_allclose(out["joint"].sum(-1), 1.0, atol=1e-12)
    # ...while only the layers below L_f of a fused run carry nothing across either.
    fused = _fake_attention(CFG.replace(fusion=fusion), seed=7)
    below = {m: layers[:CFG.fusion_layer] for m, layers in fused.items() if m != "joint"}
    np.testing.assert_array_equal(mbt_rollout(below, CFG.replace(fusion=fusion))["cross_modal"], 0.0)


@pytest.mark.parametrize("update", ["mean", "asymmetric"])
def test_fusion_tokens_written_by_the_last_layer_reach_no_one(update):
    cfg = CFG.replace(num_layers=2, fusion_layer=1, bottleneck_update=update)
    cross = mbt_rollout(_fake_attention(cfg, seed=12), cfg)["cross_modal"]
    p_spec = cfg.num_patches("spec")
    np.testing.assert_array_equal(cross[:, 0], 0.0)  # spec reads only the learned fusion tokens
    if update == "mean":  # Eq. 9: the mean is formed after the layer, for the next one
        np.testing.assert_array_equal(cross[:, 1], 0.0)
    else:  # rgb reads what spec wrote within the same layer
        assert (cross[:, 1, :p_spec] > 0).all()


def _split(r, n):
    return r[:n, :n], r[:n, n:], r[n:, :n], r[n:, n:]


def test_asymmetric_update_is_a_chain_and_differs_from_mean():
    cfg = CFG.replace(num_layers=2, fusion_layer=1, bottleneck_update="asymmetric")
    attention = _fake_attention(cfg, seed=8, batch=1)
    n, f = cfg.num_tokens("spec"), cfg.num_fusion_tokens
    z = np.zeros
    layer0 = np.block([[_hat(attention["spec"][0][0].mean(0)), z((n, n)), z((n, f))],
                       [z((n, n)), _hat(attention["rgb"][0][0].mean(0)), z((n, f))],
                       [z((f, n)), z((f, n)), np.eye(f)]])
    s_tt, s_tf, s_ft, s_ff = _split(_hat(attention["spec"][1][0].mean(0)), n)
    r_tt, r_tf, r_ft, r_ff = _split(_hat(attention["rgb"][1][0].mean(0)), n)
    # spec reads the incoming fusion tokens and writes [s_ft, 0, s_ff]; rgb reads those; rgb's go on.
    chain = np.block([[s_tt, z((n, n)), s_tf],
                      [r_tf @ s_ft, r_tt, r_tf @ s_ff],
                      [r_ff @ s_ft, r_ft, r_ff @ s_ff]])
    mean = np.block([[s_tt, z((n, n)), s_tf],
                     [z((n, n)), r_tt, r_tf],
                     [0.5 * s_ft, 0.5 * r_ft, 0.5 * (s_ff + r_ff)]])
    asym_joint = mbt_rollout(attention, cfg)["joint"][0]
    mean_joint = mbt_rollout(attention, cfg.replace(bottleneck_update="mean"))["joint"][0]
    np.testing.assert_allclose(asym_joint, chain @ layer0, atol=1e-12)
    np.testing.assert_allclose(mean_joint, mean @ layer0, atol=1e-12)
    assert np.abs(asym_joint - mean_joint).max() > 1e-3


def test_one_modality_and_start_layer():
    attention = {"rgb": _fake_attention(CFG, seed=9, fused=False)["rgb"]}
    out = mbt_rollout(attention, CFG)
    assert out["cross_modal"].shape == (2, 1, CFG.num_patches("rgb"))
    np.testing.assert_array_equal(out["cross_modal"], 0.0)
    stacked = np.stack(attention["rgb"], axis=1)
    np.testing.assert_allclose(out["joint"][:, :9, :9], attention_rollout(stacked), atol=1e-12)
    late = mbt_rollout(attention, CFG, start_layer=1, discard_ratio=0.4, head_fusion="min")["joint"][:, :9, :9]
    np.testing.assert_allclose(late, attention_rollout(stacked, "min", 0.4, start_layer=1), atol=1e-12)


def test_mbt_rollout_names_bad_streams():
    attention = _fake_attention(CFG, seed=10)
    attention["rgb"][1] = attention["rgb"][1][..., :10, :10]
    with pytest.raises(ValueError, match=r"attention\['rgb'\]\[1\]"):
        mbt_rollout(attention, CFG)
    with pytest.raises(ValueError, match="flow"):
        mbt_rollout({"flow": []}, CFG)


@pytest.mark.parametrize("fusion", ["bottleneck", "cross_attention", "self_attention"])
def test_mbt_rollout_reads_the_model_attention(fusion):
    jax = pytest.importorskip("jax")
    from mbt_core.model.model import MBT

    # Three layers: with L_f = 1 the fusion tokens written at layer 1 are read at layer 2.
    cfg = MBTConfig.preset("micro", fusion=fusion, num_layers=3)
    rng = np.random.default_rng(11)
    inputs = {"rgb": rng.random((2, 2, 8, 8, 3), np.float32), "spec": rng.random((2, 16, 8), np.float32)}
    model = MBT(cfg)
    params = model.init(jax.random.PRNGKey(0), inputs, train=False)["params"]
    _, aux = model.apply({"params": params}, inputs, train=False, capture_attention=True)
    out = mbt_rollout(aux["attention"], cfg)
    np.testing.assert_allclose(out["joint"].sum(-1), 1.0, atol=1e-5)
    assert (out["cross_modal"] > 0).any()


# ----- tightness -----

def test_tightness_closed_forms():
    uniform = tightness(np.ones((4, 6)))
    assert uniform["area"] == 0.5 and uniform["entropy"] == pytest.approx(math.log(24)) and uniform["num_cells"] == 24
    one_hot = tightness(np.eye(1, 10).reshape(2, 5) * 3.0)
    assert one_hot["area"] == 0.1 and one_hot["entropy"] == 0.0
    small = tightness([0.1, 0.4, 0.2, 0.3])  # 0.4 alone < 0.5 <= 0.4 + 0.3
    assert small["area"] == 0.5
    assert small["entropy"] == pytest.approx(-sum(p * math.log(p) for p in (0.1, 0.2, 0.3, 0.4)))
    assert tightness([0.5, 0.5, 0, 0])["area"] == 0.25
    with pytest.raises(ValueError, match="not all zero"):
        tightness(np.zeros(3))
