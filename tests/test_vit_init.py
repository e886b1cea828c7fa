"""ImageNet-21K ViT initialisation: a small checkpoint with the public key names, each rule checked."""
import jax
import numpy as np
import pytest
import scipy.ndimage

from mbt_core import MBT, MBTConfig, dummy_inputs
from mbt_core.model.vit_init import init_from_vit

D, HEADS, MLP, PATCH, GRID = 32, 4, 64, 4, 3  # a "ViT" of 3x3 patches of 4x4 pixels


def vit_checkpoint(layers=2, seed=0, big_vision=False):
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.normal(size=shape).astype(np.float32)
    flat = {"embedding/kernel": r(PATCH, PATCH, 3, D), "embedding/bias": r(D), "cls": r(1, 1, D),
            "Transformer/encoder_norm/scale": r(D), "Transformer/encoder_norm/bias": r(D),
            "pre_logits/kernel": r(D, D), "pre_logits/bias": r(D), "head/kernel": r(D, 10), "head/bias": r(10)}
    if big_vision:
        flat["pos_embedding"] = r(1, GRID * GRID, D)
    else:
        flat["Transformer/posembed_input/pos_embedding"] = r(1, 1 + GRID * GRID, D)
    names = (("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else
             ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"))
    for i in range(layers):
        b = f"Transformer/encoderblock_{i}"
        for ln in (names[0], names[2]):
            flat[f"{b}/{ln}/scale"], flat[f"{b}/{ln}/bias"] = r(D), r(D)
        for p in ("query", "key", "value"):
            flat[f"{b}/{names[1]}/{p}/kernel"], flat[f"{b}/{names[1]}/{p}/bias"] = r(D, HEADS, D // HEADS), r(HEADS, D // HEADS)
        flat[f"{b}/{names[1]}/out/kernel"], flat[f"{b}/{names[1]}/out/bias"] = r(HEADS, D // HEADS, D), r(D)
        flat[f"{b}/{names[3]}/Dense_0/kernel"], flat[f"{b}/{names[3]}/Dense_0/bias"] = r(D, MLP), r(MLP)
        flat[f"{b}/{names[3]}/Dense_1/kernel"], flat[f"{b}/{names[3]}/Dense_1/bias"] = r(MLP, D), r(D)
    return flat


def config(**kw):
    base = dict(hidden_size=D, num_layers=2, num_heads=HEADS, mlp_dim=MLP, rgb_frames=4, image_size=8, rgb_patch=PATCH,
                rgb_tubelet=2, spec_seconds=0.24, mel_bins=8, spec_patch=PATCH, fusion_layer=1, num_bottlenecks=4,
                num_classes=3)
    return MBTConfig(**{**base, **kw})


def fresh(cfg):
    return MBT(cfg).init(jax.random.PRNGKey(0), dummy_inputs(cfg, 1), train=False)["params"]


@pytest.mark.parametrize("big_vision", [False, True])
def test_every_rule(big_vision):
    cfg = config()
    vit = vit_checkpoint(big_vision=big_vision)
    before = fresh(cfg)
    params, report = init_from_vit(before, cfg, vit)
    t = params["Transformer"]
    attn = "MultiHeadDotProductAttention_0" if big_vision else "MultiHeadDotProductAttention_1"
    mlp, ln2 = ("MlpBlock_0", "LayerNorm_1") if big_vision else ("MlpBlock_3", "LayerNorm_2")
    for sfx in ("", "_spectrogram"):  # the encoder goes into every modality's tower, renamed
        for i in range(2):
            blk = t[f"encoderblock_{i}{sfx}"]
            src = f"Transformer/encoderblock_{i}"
            np.testing.assert_array_equal(blk["MultiHeadDotProductAttention_0"]["query"]["kernel"],
                                          vit[f"{src}/{attn}/query/kernel"])
            np.testing.assert_array_equal(blk["LayerNorm_1"]["scale"], vit[f"{src}/{ln2}/scale"])
            np.testing.assert_array_equal(blk["MlpBlock_0"]["Dense_1"]["kernel"], vit[f"{src}/{mlp}/Dense_1/kernel"])
    np.testing.assert_array_equal(t["encoder_norm"]["scale"], vit["Transformer/encoder_norm/scale"])
    # CLS into both modalities (the official code misses the spectrogram's).
    np.testing.assert_array_equal(params["cls"], vit["cls"])
    np.testing.assert_array_equal(params["clsspectrogram"], vit["cls"])
    # Tubelet kernel: the 2-D kernel at the central frame, zeros elsewhere.
    kernel = params["embedding"]["kernel"]
    assert kernel.shape == (2, PATCH, PATCH, 3, D)
    np.testing.assert_array_equal(kernel[1], vit["embedding/kernel"])
    assert not np.any(kernel[0])
    # Spectrogram kernel: the RGB kernel summed over its input channels.
    np.testing.assert_allclose(params["embedding_spectrogram"]["kernel"][..., 0, :], vit["embedding/kernel"].sum(2),
                               rtol=1e-6)
    np.testing.assert_array_equal(params["embedding_spectrogram"]["bias"], vit["embedding/bias"])
    # Positional embeddings: zoom(order=1) of the 3x3 grid to each modality's grid; RGB tiled over time.
    posemb = vit.get("Transformer/posembed_input/pos_embedding", vit.get("pos_embedding"))[0]
    grid = posemb[-GRID * GRID:].reshape(GRID, GRID, D)
    rgb = t["posembed_input"]["pos_embedding"][0]
    frame = scipy.ndimage.zoom(grid, (2 / 3, 2 / 3, 1), order=1).reshape(4, D)
    np.testing.assert_allclose(rgb[1:], np.tile(frame, (2, 1)), rtol=1e-6)
    if not big_vision:
        np.testing.assert_array_equal(rgb[0], posemb[0])
    spec = t["posembed_input_spectrogram"]["pos_embedding"][0]
    np.testing.assert_allclose(spec[1:], scipy.ndimage.zoom(grid, (6 / 3, 2 / 3, 1), order=1).reshape(12, D), rtol=1e-6)
    # Fusion tokens keep their N(0, 0.02) init; the classifier is dropped and reported.
    np.testing.assert_array_equal(params["bottleneck"], before["bottleneck"])
    assert {"head/kernel", "head/bias", "pre_logits/kernel", "pre_logits/bias"} <= set(report.unused_keys)
    assert set(report.uninitialised) == {"bottleneck", "output_projection/kernel", "output_projection/bias"}


def test_official_fusion_init_from_positional_embedding():
    cfg = config(num_bottlenecks=4, extra_fusion_token=True)
    vit = vit_checkpoint()
    params, report = init_from_vit(fresh(cfg), cfg, vit, init_fusion_from_posemb=True)
    posemb = vit["Transformer/posembed_input/pos_embedding"][0]
    grid = posemb[1:].reshape(GRID, GRID, D)
    want = np.concatenate([posemb[:1], scipy.ndimage.zoom(grid, (2 / 3, 2 / 3, 1), order=1).reshape(4, D)])
    np.testing.assert_allclose(params["bottleneck"][0], want, rtol=1e-6)
    assert "bottleneck" not in report.uninitialised


def test_three_channel_spectrogram_copies_kernel_and_shared_encoder():
    cfg = config(spec_channels=3, fusion="self_attention")
    vit = vit_checkpoint()
    params, report = init_from_vit(fresh(cfg), cfg, vit)
    np.testing.assert_array_equal(params["embedding_spectrogram"]["kernel"], vit["embedding/kernel"])
    assert "encoderblock_0_spectrogram" not in params["Transformer"]
    assert report.uninitialised == ["output_projection/bias", "output_projection/kernel"]


def test_deeper_model_reports_uninitialised_layers_and_bad_patch_fails():
    cfg = config(num_layers=3)
    _, report = init_from_vit(fresh(cfg), cfg, vit_checkpoint(layers=2))
    assert any(k.startswith("Transformer/encoderblock_2/") for k in report.uninitialised)
    assert "encoderblock_2" in str(report)
    bad = config(rgb_patch=2, image_size=6, spec_patch=2, mel_bins=4, spec_seconds=0.06)
    with pytest.raises(ValueError, match="patch"):
        init_from_vit(fresh(bad), bad, vit_checkpoint())
