"""mbt_core.analysis.overlay: rollout maps on patch grids, overlays on frames and spectrograms, PNG/MP4 export, Fig. 6 panels."""
import cv2
import jax
import numpy as np
import pytest

from mbt_core.analysis import overlay
from mbt_core.analysis.rollout import mbt_rollout, tightness
from mbt_core.media.images import spectrogram_image, to_uint8
from mbt_core.config import MBTConfig
from mbt_core.data.cache import CachedSplit
from mbt_core.model.model import MBT, dummy_inputs


def _model(**overrides):
    config = MBTConfig.preset("micro", **overrides)
    params = MBT(config).init(jax.random.PRNGKey(0), dummy_inputs(config), train=False)["params"]
    return config, params


def _example(config, seed=0):
    """Clip 0 of a random one-view CachedSplit, as the model reads it (frames in [-1, 1])."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (2, 1, *config.input_shape("rgb")), dtype=np.uint8)
    spec = rng.normal(size=(2, 1, config.spec_frames, config.mel_bins)).astype(np.float32)
    return CachedSplit(frames, spec, np.zeros(2, bool), np.zeros(2, bool)).example(0)


MID = dict(num_layers=3, fusion_layer=1)  # bottleneck fusion from the second of three layers, B = 2


@pytest.fixture(scope="module")
def mid():
    config, params = _model(**MID)
    example = _example(config)
    return config, params, example, overlay.clip_rollout(config, params, example)


@pytest.mark.parametrize("tubelet", [1, 2])
def test_clip_rollout_is_mbt_rollout_on_the_patch_grids(tubelet):
    config, params = _model(rgb_tubelet=tubelet, **MID)
    example = _example(config)
    result = overlay.clip_rollout(config, params, example, head_fusion="max")
    _, aux = MBT(config).apply({"params": params}, {m: v[None] for m, v in example.items()}, train=False,
                               capture_attention=True)
    expected = mbt_rollout(aux["attention"], config, head_fusion="max")
    for m in config.modalities:
        assert result["grids"][m] == config.grid(m)
        assert result["maps"][m].shape == config.grid(m)
        # clip_rollout runs the compiled model: equal to the eager one up to float32 rounding.
        np.testing.assert_allclose(result["maps"][m].ravel(), expected["cls_to_patches"][m][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result["joint"], expected["joint"][0], rtol=1e-5, atol=1e-7)
    assert result["grids"]["rgb"] == (2 // tubelet, 2, 2) and result["grids"]["spec"] == (4, 2)
    # The cross-modal row of spec's CLS, cut at rgb's patches, is the spec <- rgb map; own patches are 0.
    cross = expected["cross_modal"][0]
    n_spec = config.num_patches("spec")
    np.testing.assert_allclose(result["cross_maps"]["spec"]["rgb"].ravel(), cross[0, n_spec:], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(result["cross_maps"]["rgb"]["spec"].ravel(), cross[1, :n_spec], rtol=1e-5, atol=1e-9)
    # All output CLS tokens (the classifier averages them): the mean of own and cross readouts.
    np.testing.assert_allclose(result["fused_maps"]["rgb"],
                               (result["maps"]["rgb"] + result["cross_maps"]["spec"]["rgb"]) / 2)
    with pytest.raises(ValueError, match="uint8"):
        overlay.clip_rollout(config, params, {**example, "rgb": to_uint8(example["rgb"])})


def test_late_fusion_cross_modal_maps_are_zero_and_mid_bottleneck_ones_are_not(mid):
    config, params = _model(fusion_layer=2)  # L_f = L: late fusion
    late = overlay.clip_rollout(config, params, _example(config))
    assert np.all(late["cross_maps"]["spec"]["rgb"] == 0) and np.all(late["cross_maps"]["rgb"]["spec"] == 0)
    result = mid[3]
    assert result["cross_maps"]["spec"]["rgb"].min() > 0 and result["cross_maps"]["rgb"]["spec"].min() > 0
    np.testing.assert_array_equal(overlay.select_map(result, "rgb", "spec"), result["cross_maps"]["spec"]["rgb"])
    np.testing.assert_array_equal(overlay.select_map(result, "rgb", "rgb"), result["maps"]["rgb"])
    with pytest.raises(ValueError, match="flow"):
        overlay.select_map(result, "flow")


def test_to_uint8_matches_the_cache_and_keeps_uint8():
    frames = np.array([-1.0, -0.5, 0.0, 0.999, 1.0], np.float32)
    np.testing.assert_array_equal(to_uint8(frames), [0, 64, 128, 255, 255])
    raw = np.arange(10, dtype=np.uint8)
    assert to_uint8(raw) is raw


def test_one_hot_map_is_brightest_at_its_patch():
    grid = np.zeros((3, 4))
    grid[1, 2] = 1.0  # patch rows 8..15, columns 16..23 of a 24 x 32 frame
    heat = overlay.upsample(grid, (24, 32))
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 8 <= y < 16 and 16 <= x < 24
    assert heat[12, 20] > heat[4, 4]
    black = np.full((24, 32, 3), -1.0, np.float32)
    image = overlay.frame_overlay(black, grid, alpha=1.0)
    colour = lambda v: cv2.applyColorMap(np.uint8([[v]]), cv2.COLORMAP_JET)[0, 0, ::-1]  # RGB
    np.testing.assert_array_equal(image[y, x], colour(255))
    np.testing.assert_array_equal(image[0, 0], colour(0))
    # Bigger output: the peak scales with the frame.
    big = overlay.frame_overlay(black, grid, size=(48, 64), alpha=1.0)
    np.testing.assert_array_equal(big[24, 40], colour(255))


def test_spectrogram_overlay_puts_low_frequencies_at_the_bottom():
    spec = np.zeros((40, 16), np.float32)
    spec[:, :4] = 1.0  # loud low mel bins
    image = spectrogram_image(spec)
    assert image.shape == (16, 40, 3) and image[-1, 0, 0] == 255 and image[0, 0, 0] == 0
    spec_map = np.zeros((5, 4))  # (time, freq) patches of 8 x 4
    spec_map[4, 0] = 1.0  # the last time patch, lowest frequency band
    out = overlay.spectrogram_overlay(spec, spec_map, alpha=1.0)
    peak = cv2.applyColorMap(np.uint8([[255]]), cv2.COLORMAP_JET)[0, 0, ::-1]
    np.testing.assert_array_equal(out[14, 36], peak)  # bottom right
    assert not np.array_equal(out[1, 36], peak) and not np.array_equal(out[14, 4], peak)


def test_frames_summed_equals_sum_of_per_frame_maps():
    rng = np.random.default_rng(3)
    tubelet_map = rng.random((3, 2, 4))
    per_frame = overlay.frame_maps(tubelet_map, 2)
    assert per_frame.shape == (6, 2, 4)
    np.testing.assert_allclose(per_frame[0], tubelet_map[0] / 2)
    np.testing.assert_array_equal(per_frame[0], per_frame[1])
    np.testing.assert_allclose(overlay.summed_map(tubelet_map, 2), per_frame.sum(0))
    np.testing.assert_allclose(overlay.summed_map(tubelet_map, 2), tubelet_map.sum(0))  # mass is kept
    frames = rng.uniform(-1, 1, (6, 8, 16, 3)).astype(np.float32)
    video = overlay.frames_overlay(frames, tubelet_map, 2)
    assert video.shape == (6, 8, 16, 3) and video.dtype == np.uint8
    with pytest.raises(ValueError, match="5 frames"):
        overlay.frames_overlay(frames[:5], tubelet_map, 2)


def test_png_and_mp4_are_written_and_read_back(tmp_path, mid):
    config, _, example, result = mid
    written = overlay.export_clip(example, result, tmp_path, "clip7", panel_width=64)
    assert set(written) == {"rgb_summed_png", "rgb_mp4", "spec_png"}
    png = cv2.imread(str(written["rgb_summed_png"]))[..., ::-1]
    np.testing.assert_array_equal(png, overlay.summed_overlay(example["rgb"], result["fused_maps"]["rgb"],
                                                              size=(64, 64)))
    spec_png = cv2.imread(str(written["spec_png"]))
    assert spec_png.shape == (max(round(8 * 64 / 16), 16), 64, 3)
    capture = cv2.VideoCapture(str(written["rgb_mp4"]))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    assert len(frames) == config.rgb_frames and frames[0].shape == (64, 64, 3)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == config.rgb_frames


def test_mp4_falls_back_to_pyav_when_opencv_cannot_write(tmp_path, monkeypatch):
    pytest.importorskip("mbt_core.media.video_writer")

    class Closed:
        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(overlay.cv2, "VideoWriter", Closed)
    frames = np.random.default_rng(0).integers(0, 256, (5, 15, 17, 3), dtype=np.uint8)  # odd sizes get padded
    path = overlay.write_mp4(tmp_path / "fallback.mp4", frames, fps=5)
    monkeypatch.undo()
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 5
    with pytest.raises(ValueError, match="RGB frames"):
        overlay.write_mp4(tmp_path / "bad.mp4", frames[..., 0], fps=5)


def test_side_by_side_has_both_panels_and_their_tightness(mid):
    _, _, example, mbt = mid
    config, params = _model(fusion="self_attention", **MID)
    vanilla = overlay.clip_rollout(config, params, example)
    image, stats = overlay.side_by_side(example, {"vanilla": vanilla, "MBT": mbt}, panel_width=96)
    assert image.shape[1] == 2 * 96 + 8
    for i, (label, result) in enumerate((("vanilla", vanilla), ("MBT", mbt))):
        shown = overlay.summed_map(result["fused_maps"]["rgb"])
        assert stats[label] == tightness(shown)
        panel = image[:, i * (96 + 8):i * (96 + 8) + 96]
        body = overlay.summed_overlay(example["rgb"], result["fused_maps"]["rgb"], size=(96, 96))
        np.testing.assert_array_equal(panel[-96:], body)
        header = panel[:-96]
        assert (header < 128).any() and (header == 255).mean() > 0.5  # black text on white
    assert not np.array_equal(image[-96:, :96], image[-96:, -96:])
    # Spectrogram panels, and a map no mass reaches (late fusion: audio CLS <- RGB) has no statistics.
    _, spec_stats = overlay.side_by_side(example, {"MBT": mbt}, source="spec", mass=0.9)
    assert spec_stats["MBT"] == tightness(mbt["fused_maps"]["spec"], 0.9)
    late_config, late_params = _model(fusion_layer=2)
    late = overlay.clip_rollout(late_config, late_params, example)
    _, late_stats = overlay.side_by_side(example, {"late": late, "MBT": mbt}, readout="spec")
    assert late_stats["late"] is None
    assert late_stats["MBT"] == tightness(overlay.summed_map(mbt["cross_maps"]["spec"]["rgb"]))
