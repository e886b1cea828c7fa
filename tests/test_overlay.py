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


def _jet(values) -> np.ndarray:
    """RGB of OpenCV's JET colormap at uint8 levels."""
    return cv2.applyColorMap(np.uint8(values).reshape(-1, 1), cv2.COLORMAP_JET)[:, 0, ::-1]


def test_one_hot_map_is_brightest_at_its_patch():
    grid = np.zeros((3, 4))
    grid[1, 2] = 1.0  # patch rows 8..15, columns 16..23 of a 24 x 32 frame
    heat = overlay.upsample(grid, (24, 32))
    np.testing.assert_array_equal(heat, np.kron(grid, np.ones((8, 8))))  # nearest patch: one flat block each
    smooth = overlay.upsample(grid, (24, 32), cv2.INTER_LINEAR)
    y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
    assert 8 <= y < 16 and 16 <= x < 24 and smooth[12, 20] > smooth[4, 4]
    black = np.full((24, 32, 3), -1.0, np.float32)
    image = overlay.frame_overlay(black, grid, alpha=1.0)
    np.testing.assert_array_equal(image[8:16, 16:24], np.broadcast_to(_jet(255), (8, 8, 3)))
    np.testing.assert_array_equal(image[0, 0], _jet(0)[0])
    big = overlay.frame_overlay(black, grid, size=(48, 64), alpha=1.0)
    np.testing.assert_array_equal(big[16:32, 32:48], np.broadcast_to(_jet(255), (16, 16, 3)))


def _numpy_blend(frame: np.ndarray, grid: np.ndarray, factor: int, alpha: float) -> np.ndarray:
    """Independent blend: whole-factor nearest enlargement (np.kron), JET of the map scaled to its max, mixed."""
    big = np.kron(frame, np.ones((factor, factor, 1), np.uint8))
    patch = big.shape[0] // grid.shape[0], big.shape[1] // grid.shape[1]
    heat = np.kron(grid, np.ones(patch))
    colours = _jet(np.rint(255 * heat / heat.max()).ravel()).reshape(*heat.shape, 3)
    return (1 - alpha) * big + alpha * colours


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_frame_panels_show_the_frame_the_map_and_their_blend(alpha):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    grid = rng.random((3, 3))
    panels = overlay.frame_panels(frame, grid, width=240, alpha=alpha)
    assert {k: v.shape for k, v in panels.items()} == {k: (240, 240, 3) for k in ("frame", "map", "blend")}
    expected = _numpy_blend(frame, grid, 10, alpha)
    assert np.abs(panels["blend"].astype(float) - expected).max() <= 1.0  # rounding only
    # The frame's pixels are visible in the blend: at opacity a they keep (1 - a) of their weight.
    if alpha < 1:
        recovered = (panels["blend"].astype(float) - alpha * _numpy_blend(frame, grid, 10, 1.0)) / (1 - alpha)
        assert np.abs(recovered - np.kron(frame, np.ones((10, 10, 1)))).max() <= 1.0 / (1 - alpha) + 1e-9
    # Frame and map panels keep the patch grid: white lines on the borders of the 3 x 3 patches (80 pixels).
    assert (panels["frame"][80] == 255).all() and (panels["map"][:, 160] == 255).all()
    np.testing.assert_array_equal(panels["frame"][1:80, 1:80], np.kron(frame, np.ones((10, 10, 1), np.uint8))[1:80, 1:80])
    image = overlay.frame_triptych(frame, grid, width=240, alpha=alpha)
    assert image.shape[1] == 3 * 240 + 2 * 8
    np.testing.assert_array_equal(image[-240:, -240:], panels["blend"])


def test_spectrogram_overlay_puts_low_frequencies_at_the_bottom():
    spec = np.zeros((40, 16), np.float32)
    spec[:, :4] = 1.0  # loud low mel bins
    image = spectrogram_image(spec)
    assert image.shape == (16, 40, 3) and image[-1, 0, 0] == 255 and image[0, 0, 0] == 0
    spec_map = np.zeros((5, 4))  # (time, freq) patches of 8 x 4
    spec_map[4, 0] = 1.0  # the last time patch, lowest frequency band
    out = overlay.spectrogram_overlay(spec, spec_map, alpha=1.0)
    peak = _jet(255)[0]
    np.testing.assert_array_equal(out[14, 36], peak)  # bottom right
    assert not np.array_equal(out[1, 36], peak) and not np.array_equal(out[14, 4], peak)


def test_spectrogram_panels_have_time_and_frequency_axes():
    import librosa

    spec = np.random.default_rng(2).normal(size=(400, 32)).astype(np.float32)  # 4 s at 100 frames/s, 32 mel bins
    spec_map = np.random.default_rng(3).random((25, 2))  # 16 x 16 patches
    panels = overlay.spectrogram_panels(spec, spec_map, width=800, alpha=0.4)
    body = (32 * 4, 400 * 2)  # 4 pixels per mel bin, 2 per frame
    for picture in panels.values():
        assert picture.shape[0] > body[0] and picture.shape[1] > body[1]
        axes = picture[:, :picture.shape[1] - body[1]]
        assert (axes < 128).any()  # tick labels and axis names are drawn left of and below the picture
    inner = lambda p: p[:body[0], -body[1]:]
    expected = 0.6 * np.kron(spectrogram_image(spec), np.ones((4, 2, 1))) + 0.4 * np.kron(
        _jet(np.rint(255 * spec_map.T[::-1] / spec_map.max()).ravel()).reshape(2, 25, 3), np.ones((64, 32, 1)))
    assert np.abs(inner(panels["blend"]).astype(float) - expected).max() <= 1.0
    hz = librosa.mel_frequencies(n_mels=34, fmin=0.0, fmax=8000.0)[1:-1]
    from mbt_core.media.audio import mel_centres
    np.testing.assert_allclose(mel_centres(32), hz)
    assert hz[0] > 0 and hz[-1] < 8000


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
    frames = example["rgb"]
    np.testing.assert_array_equal(png, overlay.frame_triptych(frames[len(frames) // 2],
                                                              overlay.summed_map(result["fused_maps"]["rgb"]), 64))
    spec_png = cv2.imread(str(written["spec_png"]))[..., ::-1]
    np.testing.assert_array_equal(spec_png, overlay.spectrogram_triptych(example["spec"], result["fused_maps"]["spec"],
                                                                         3 * 64))
    capture = cv2.VideoCapture(str(written["rgb_mp4"]))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    assert len(frames) == config.rgb_frames and frames[0].shape == (64, 64, 3)  # 8 pixels enlarged 8 times
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


def test_side_by_side_has_a_row_per_model_and_their_tightness(mid):
    _, _, example, mbt = mid
    config, params = _model(fusion="self_attention", **MID)
    vanilla = overlay.clip_rollout(config, params, example)
    image, stats = overlay.side_by_side(example, {"vanilla": vanilla, "MBT": mbt}, panel_width=96)
    middle = example["rgb"][len(example["rgb"]) // 2]
    bodies = [overlay.frame_triptych(middle, overlay.summed_map(r["fused_maps"]["rgb"]), 96) for r in (vanilla, mbt)]
    assert image.shape[1] == bodies[0].shape[1] == 3 * 96 + 2 * 8
    header = image.shape[0] - 2 * bodies[0].shape[0] - 16  # two caption strips (label, statistics) of equal height
    for i, (label, result) in enumerate((("vanilla", vanilla), ("MBT", mbt))):
        shown = overlay.summed_map(result["fused_maps"]["rgb"])
        assert stats[label] == tightness(shown)
        top = (i + 1) * header // 2 + i * (bodies[0].shape[0] + 16)
        np.testing.assert_array_equal(image[top:top + bodies[i].shape[0]], bodies[i])
        strip = image[top - header // 2:top]
        assert (strip < 128).any() and (strip == 255).mean() > 0.5  # black text on white
    # Spectrogram rows, and a map no mass reaches (late fusion: audio CLS <- RGB) has no statistics.
    _, spec_stats = overlay.side_by_side(example, {"MBT": mbt}, source="spec", mass=0.9)
    assert spec_stats["MBT"] == tightness(mbt["fused_maps"]["spec"], 0.9)
    late_config, late_params = _model(fusion_layer=2)
    late = overlay.clip_rollout(late_config, late_params, example)
    _, late_stats = overlay.side_by_side(example, {"late": late, "MBT": mbt}, readout="spec")
    assert late_stats["late"] is None
    assert late_stats["MBT"] == tightness(overlay.summed_map(mbt["cross_maps"]["spec"]["rgb"]))
