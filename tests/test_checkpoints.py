"""Official checkpoints: the reference fixtures reproduce, sizes are inferred, bad files are named."""

import numpy as np
import pytest
from mbt_core import MBT, MBTConfig
from mbt_core.model.checkpoints import infer_config, load_scenic
from official_checkpoint import released_names, write_official
from shared import shared_path


def fixture(name):
    path = shared_path("reference", "scenic_mbt", f"{name}.npz")
    data = np.load(path)
    return path, data, {"rgb": data["input/rgb"], "spec": data["input/spectrogram"]}


@pytest.mark.parametrize("impl", ["explicit", "per_head", "xla"])
@pytest.mark.parametrize("name, fusion", [("bottleneck_token_fl2", "bottleneck"),
                                          ("vanilla_xattn_token_fl2", "cross_attention")])
def test_official_fixture_reproduced(name, fusion, impl):
    path, data, x = fixture(name)
    config, params = load_scenic(path, fusion_layer=2)
    config = config.replace(attention_impl=impl)
    assert config.fusion == fusion and config.num_layers == 4 and config.hidden_size == 32
    assert config.rgb_tubelet == 2 and config.spec_channels == 3 and config.total_classes == 5
    if fusion == "bottleneck":
        assert config.num_bottlenecks == 4 and config.extra_fusion_token
    model = MBT(config)
    logits, _ = model.apply({"params": params}, x, train=False)
    np.testing.assert_allclose(logits, data["out/eval"], atol=1e-5)
    _, aux = model.apply({"params": params}, x, train=True)
    np.testing.assert_allclose(aux["per_modality"]["rgb"], data["out/train/rgb"], atol=1e-5)
    np.testing.assert_allclose(aux["per_modality"]["spec"], data["out/train/spectrogram"], atol=1e-5)


def _flat(data, rename=lambda k: k):
    return {rename(k[len("param/"):]): data[k] for k in data.files if k.startswith("param/")}


@pytest.mark.parametrize("route", [("params",), ("optimizer", "target")])
def test_msgpack_checkpoint_and_spec_suffix(tmp_path, route):
    path, data, x = fixture("bottleneck_token_fl2")
    ckpt = write_official(tmp_path / "checkpoint_100", _flat(data), route, rename=released_names)
    config, params = load_scenic(ckpt, fusion_layer=2)
    logits, _ = MBT(config).apply({"params": params}, x, train=False)
    np.testing.assert_allclose(logits, data["out/eval"], atol=1e-5)


def test_npz_without_prefix_and_summed_spectrogram_channels(tmp_path):
    path, data, x = fixture("bottleneck_token_fl2")
    npz = tmp_path / "plain.npz"
    np.savez(npz, **_flat(data))
    config, params = load_scenic(npz, fusion_layer=2, sum_spec_channels=True)
    assert config.spec_channels == 1
    # Exact for tiled input: one log-mel channel repeated, as the official pipeline feeds it.
    mono = x["spec"][..., :1]
    ref_config, ref_params = load_scenic(path, fusion_layer=2)
    want, _ = MBT(ref_config).apply({"params": ref_params}, {**x, "spec": np.tile(mono, (1, 1, 1, 3))}, train=False)
    got, _ = MBT(config).apply({"params": params}, {**x, "spec": mono[..., 0]}, train=False)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_single_modality_naming_and_unused_parameters_reported(tmp_path):
    path, data, x = fixture("bottleneck_token_fl2")
    flat = {k: v for k, v in _flat(data).items() if "spectrogram" in k or k in ("bottleneck", "output_projection/kernel",
            "output_projection/bias") or k.startswith("Transformer/encoder_norm")}
    flat["cls"] = flat.pop("clsspectrogram")
    npz = tmp_path / "spec_only.npz"
    np.savez(npz, **flat)
    with pytest.warns(UserWarning, match="bottleneck"):
        config, params = load_scenic(npz)
    assert config.modalities == ("spec",)
    alone, _ = MBT(config).apply({"params": params}, {"spec": x["spec"]}, train=False)
    ref_config, ref_params = load_scenic(path, fusion_layer=2)
    _, aux = MBT(ref_config).apply({"params": ref_params}, {"spec": x["spec"]}, train=False)
    np.testing.assert_allclose(alone, aux["per_modality"]["spec"], atol=1e-6)


def test_missing_and_misshapen_parameters_are_named(tmp_path):
    path, data, _ = fixture("bottleneck_token_fl2")
    flat = _flat(data)
    missing = dict(flat)
    del missing["Transformer/encoderblock_3/LayerNorm_1/scale"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match="encoderblock_3/LayerNorm_1/scale"):
        load_scenic(tmp_path / "missing.npz", fusion_layer=2)
    wrong = dict(flat)
    wrong["Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"] = np.zeros(31, np.float32)
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(ValueError, match="encoderblock_1/MlpBlock_0/Dense_1/bias"):
        load_scenic(tmp_path / "wrong.npz", fusion_layer=2)
    with pytest.raises(ValueError, match="fusion_layer"):
        load_scenic(path)
    (tmp_path / "junk").write_bytes(b"\x00not msgpack")
    with pytest.raises(ValueError, match="junk"):
        load_scenic(tmp_path / "junk", fusion_layer=2)


def test_released_audioset_geometry_inferred_from_shapes():
    rows = shared_path("reference", "scenic_mbt", "vit_b_param_shapes.tsv").read_text().splitlines()
    flat = {}
    for row in rows:
        key, shape = row.split("\t")
        # Zero-stride views: shapes without the memory of a ViT-B.
        flat[key] = np.broadcast_to(np.float32(0), tuple(int(s) for s in shape.strip("()").split(",") if s.strip()))
    config = infer_config(flat, fusion_layer=8)
    assert config == MBTConfig.preset("official-audioset")
    table = dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, rgb_frames=32, rgb_tubelet=2,
                 spec_frames=800, mel_bins=128, spec_channels=3, num_bottlenecks=4, total_classes=527)
    assert {k: getattr(config, k) for k in table} == table
