"""Augmentations (Sec. 4.2, 4.3): crop with scale jitter, flip, colour jitter, SpecAugment, (modality) mixup.

Each is checked against a closed form: where a crop came from, the slope of a ramp, luma weights, mask
widths within their bounds, and the mixup formulas with one partner permutation for all modalities.
"""
import colorsys
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mbt_core.data import augment  # noqa: E402


def _ramp(frames=3, h=27, w=40):
    """Frames whose value at (f, y, x) is (x, y, 10 f): a crop reveals where it was taken from."""
    f, y, x = np.meshgrid(np.arange(frames), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([x, y, 10 * f], -1).astype(np.float32)


def test_crop_without_jitter_is_a_window_shared_by_all_frames():
    frames = _ramp()
    for seed in range(10):
        out = augment.random_crop(frames, 24, np.random.default_rng(seed), scale=(1.0, 1.0))
        assert out.shape == (3, 24, 24, 3)
        left, top = out[0, 0, 0, :2].astype(int)
        np.testing.assert_array_equal(out, frames[:, top:top + 24, left:left + 24])


def test_scale_jitter_changes_scale_within_bounds():
    frames = _ramp(h=256, w=300)
    slopes = []
    for seed in range(40):
        out = augment.random_crop(frames, 224, np.random.default_rng(seed), scale=(0.9, 1.33))
        assert out.shape == (3, 224, 224, 3)
        # One output pixel spans 1 / factor input pixels, independently in x and y (as the official code).
        sx = np.polyfit(np.arange(224), out[0, 100, :, 0], 1)[0]
        sy = np.polyfit(np.arange(224), out[0, :, 100, 1], 1)[0]
        slopes += [sx, sy]
        np.testing.assert_allclose(out[2, ..., 2], 20.0, atol=1e-3)  # frames are not mixed
    assert 1 / 1.33 - 0.01 < min(slopes) and max(slopes) < 1 / 0.9 + 0.01
    assert max(slopes) - min(slopes) > 0.2  # the scale does vary


def test_flip():
    frames = _ramp()
    np.testing.assert_array_equal(augment.random_flip(frames, np.random.default_rng(0), p=1.0), frames[:, :, ::-1])
    assert augment.random_flip(frames, np.random.default_rng(0), p=0.0) is frames


def _colour_reference(frames, rng, p=0.8, drop=0.1, brightness=32 / 255, saturation=(0.6, 1.4),
                      contrast=(0.6, 1.4), hue=0.2):
    """The documented colour jitter in float64, pixel by pixel through the standard library's colorsys."""
    x = frames / 255.0
    to_hsv, to_rgb = np.vectorize(colorsys.rgb_to_hsv), np.vectorize(colorsys.hsv_to_rgb)
    if rng.random() < p:
        b, s, c, t = (rng.uniform(-brightness, brightness), rng.uniform(*saturation), rng.uniform(*contrast),
                      rng.uniform(-hue, hue))
        h, sat, v = to_hsv(*np.moveaxis(np.clip(x + b, 0, 1), -1, 0))
        x = np.stack(to_rgb(h, np.minimum(sat * s, 1.0), v), -1)
        mean = x.mean(axis=(1, 2), keepdims=True)
        h, sat, v = to_hsv(*np.moveaxis(np.clip((x - mean) * c + mean, 0, 1), -1, 0))
        x = np.clip(np.stack(to_rgb((h + t) % 1.0, sat, v), -1), 0, 1)
    if rng.random() < drop:
        x = np.repeat(x @ np.array([0.2989, 0.5870, 0.1140]), 3).reshape(x.shape)
    return x


@pytest.mark.parametrize("p, drop", [(1.0, 0.0), (0.8, 0.1), (0.0, 1.0), (1.0, 1.0)])
def test_colour_jitter_matches_a_colorsys_reference_draw_for_draw(p, drop):
    # Same seed, same draws in the documented order: uint8 in, float32 [0, 1] out, within float32 rounding.
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    frames[0, 0, :3] = [[255, 0, 0], [0, 0, 0], [255, 255, 255]]  # hue 0, V = 0, S = 0
    for seed in range(12):
        got = augment.color_jitter(frames, np.random.default_rng(seed), p=p, drop=drop)
        assert got.dtype == np.float32 and got.shape == frames.shape
        np.testing.assert_allclose(got, _colour_reference(frames, np.random.default_rng(seed), p=p, drop=drop),
                                   atol=2e-5)


def test_colour_jitter_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.integers(50, 200, (2, 4, 5, 3), dtype=np.uint8)
    same = dict(saturation=(1.0, 1.0), contrast=(1.0, 1.0), hue=0.0)
    np.testing.assert_array_equal(augment.color_jitter(x, rng, p=0.0, drop=0.0), x / np.float32(255))
    # Brightness alone: one offset for the whole clip, within +-32/255.
    shift = augment.color_jitter(x, rng, p=1.0, drop=0.0, **same) - x / 255
    assert np.ptp(shift) < 1e-5 and abs(shift.mean()) <= 32 / 255 + 1e-6
    # Contrast alone, by exactly 2: about each frame's channel means.
    out = augment.color_jitter(x, rng, p=1.0, drop=0.0, brightness=0.0, saturation=(1, 1), contrast=(2, 2), hue=0.0)
    mean = (x / 255).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out, np.clip(2 * (x / 255 - mean) + mean, 0, 1), atol=1e-5)
    # Half a turn of hue maps pure red to cyan; no saturation leaves each pixel's maximum.
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 1.0
    for turn in (0.5, -0.5):
        np.testing.assert_allclose(augment._hsv(red, hue=turn), np.broadcast_to([0.0, 1.0, 1.0], red.shape), atol=1e-5)
    flat = augment.color_jitter(x, rng, p=1.0, drop=0.0, brightness=0.0, saturation=(0, 0), contrast=(1, 1), hue=0.0)
    np.testing.assert_allclose(flat, np.repeat(x.max(-1) / 255, 3).reshape(x.shape), atol=1e-5)
    # Colour drop: every channel the ITU-R 601 luma.
    grey = augment.color_jitter(x, rng, p=0.0, drop=1.0)
    np.testing.assert_allclose(grey, np.repeat(x / 255 @ np.array([0.2989, 0.5870, 0.1140]), 3).reshape(x.shape),
                               atol=1e-6)


def test_colour_jitter_is_one_draw_per_clip_and_stays_in_range():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
    for seed in range(20):
        out = augment.color_jitter(np.repeat(frame, 4, 0), np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_allclose(out, np.repeat(out[:1], 4, 0), atol=1e-6)  # SIMD and tail: an ulp apart


def _masked(out):
    """Masked time frames and frequency bins of a positive spectrogram (whole rows/columns at 0)."""
    zero = out == 0
    return np.flatnonzero(zero.all(1)), np.flatnonzero(zero.all(0))


def test_spec_augment_paper_masks_within_bounds():
    spec = np.random.default_rng(0).uniform(1, 2, (800, 128)).astype(np.float32)
    widths_t, widths_f = [], []
    for seed in range(50):
        out = augment.spec_augment(spec, np.random.default_rng(seed))
        rows, cols = _masked(out)
        # One contiguous band each, of at most 192 frames and 48 bins; everything else untouched.
        for band, widths in ((rows, widths_t), (cols, widths_f)):
            assert band.size == 0 or np.all(np.diff(band) == 1)
            widths.append(band.size)
        expect = spec.copy()
        expect[rows] = 0
        expect[:, cols] = 0
        np.testing.assert_array_equal(out, expect)
    assert max(widths_t) <= 192 and max(widths_f) <= 48
    assert max(widths_t) > 96 and max(widths_f) > 24  # the bounds are actually used
    assert spec.min() > 0  # the input is not modified in place


def test_spec_augment_official_option():
    spec = np.ones((800, 128, 3), np.float32)
    most_bands = 0
    for seed in range(30):
        out = augment.spec_augment(spec, np.random.default_rng(seed), **augment.OFFICIAL_SPEC_AUGMENT)
        assert np.array_equal(out[..., 0], out[..., 2])  # channels masked alike
        rows, cols = _masked(out[..., 0])
        bands = len(np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)) if rows.size else 0
        # Four time masks of up to 48 frames (they may overlap), one frequency mask of up to 48 bins.
        assert bands <= 4 and rows.size <= 4 * 48 and cols.size <= 48
        most_bands = max(most_bands, bands)
    assert most_bands >= 3
    tiny = augment.spec_augment(np.ones((10, 4), np.float32), np.random.default_rng(0), max_time=192, max_freq=48)
    assert tiny.shape == (10, 4)  # masks wider than the spectrogram are capped


def test_augment_example_masks_hold_the_mean_and_follow_the_train_config():
    from mbt_core.recipes import TrainConfig

    rng = np.random.default_rng(3)
    raw = rng.normal(-7.0, 3.0, (400, 32)).astype(np.float32)
    standard = (raw - raw.mean()) / raw.std()
    train = TrainConfig(frame_augment=False, spec_time_masks=1, spec_max_time=400, spec_freq_masks=0)
    for spec, standardised, mean in ((standard, True, 0.0), (raw, False, float(raw.mean()))):
        for seed in range(20):
            out = augment.augment_example({"spec": spec}, np.random.default_rng(seed), train, 8, standardised)["spec"]
            rows, _ = _masked(out - np.float32(mean))  # masked rows hold exactly the mean
            if rows.size:
                break
        assert rows.size and np.all(out[rows] == np.float32(mean)), standardised
        np.testing.assert_array_equal(np.delete(out, rows, 0), np.delete(spec, rows, 0))
    # The run config alone decides: no masks, no crop -> the example unchanged; frames leave in [-1, 1].
    off = TrainConfig(frame_augment=False, spec_time_masks=0, spec_freq_masks=0)
    np.testing.assert_array_equal(augment.augment_example({"spec": raw}, rng, off, 8, False)["spec"], raw)
    frames = rng.integers(0, 256, (2, 9, 9, 3), dtype=np.uint8)
    got = augment.augment_example({"rgb": frames}, rng, TrainConfig(crop_scale=(1.0, 1.0), color_jitter=0.0,
                                                                     color_drop=0.0, flip=0.0), 8, False)["rgb"]
    assert got.shape == (2, 8, 8, 3) and got.dtype == np.float32
    assert any(np.allclose(got, frames[:, t:t + 8, l:l + 8] / 127.5 - 1.0, atol=1e-6) for t in (0, 1) for l in (0, 1))


def _batch(size=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"rgb": rng.normal(size=(size, 2, 4, 4, 3)).astype(np.float32),
            "spec": rng.normal(size=(size, 8, 4)).astype(np.float32),
            "labels": np.eye(size, 5, dtype=np.float32), "index": np.arange(size)}


def test_mixup_closed_form_reverse_partner():
    batch = _batch()
    out = augment.mixup(batch, np.random.default_rng(0), 0.3, modalities=("rgb", "spec"))
    perm = np.arange(6)[::-1]
    np.testing.assert_array_equal(out["mixup_partner"], perm)
    lam = out["mixup_rgb"]
    assert out["mixup_spec"] == lam and 0 <= lam <= 1  # plain mixup: one weight for all
    for m in ("rgb", "spec"):
        np.testing.assert_allclose(out[m], lam * batch[m] + (1 - lam) * batch[m][perm], rtol=1e-6)
        np.testing.assert_allclose(out[f"labels_{m}"], lam * batch["labels"] + (1 - lam) * batch["labels"][perm])
    np.testing.assert_allclose(out["labels"], out["labels_rgb"])
    np.testing.assert_array_equal(out["index"], batch["index"])  # other entries pass through
    np.testing.assert_array_equal(batch["rgb"], _batch()["rgb"])  # the input batch is not modified


def test_modality_mixup_shares_a_random_partner():
    batch = _batch(size=8)
    out = augment.mixup(batch, np.random.default_rng(3), 1.0, modality_mixup=True, partner="random",
                        modalities=("rgb", "spec"))
    perm = out["mixup_partner"]
    assert sorted(perm) == list(range(8)) and list(perm) != list(range(8))[::-1]
    assert out["mixup_rgb"] != out["mixup_spec"]  # one Beta draw per modality
    for m in ("rgb", "spec"):
        lam = out[f"mixup_{m}"]
        # The same partner for every modality: recover it from each modality's mix and compare.
        np.testing.assert_allclose(out[m], lam * batch[m] + (1 - lam) * batch[m][perm], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[f"labels_{m}"], lam * batch["labels"] + (1 - lam) * batch["labels"][perm])
    np.testing.assert_allclose(out["labels"], (out["labels_rgb"] + out["labels_spec"]) / 2)


def test_mixup_identity_and_distribution():
    batch = _batch()
    out = augment.mixup(batch, np.random.default_rng(0), modalities=("rgb", "spec"), weights={"rgb": 1.0, "spec": 1.0})
    for m in ("rgb", "spec"):
        np.testing.assert_array_equal(out[m], batch[m])
        np.testing.assert_array_equal(out[f"labels_{m}"], batch["labels"])
    rng = np.random.default_rng(0)
    lams = [augment.mixup(batch, rng, 0.3, modalities=("spec",))["mixup_spec"] for _ in range(2000)]
    # Beta(0.3, 0.3): mean 1/2, variance 1/(4 (2 alpha + 1)) = 0.15625.
    assert np.mean(lams) == pytest.approx(0.5, abs=0.03) and np.var(lams) == pytest.approx(0.15625, abs=0.015)
    with pytest.raises(ValueError, match="partner"):
        augment.mixup(batch, rng, partner="next", modalities=("spec",))
    with pytest.raises(ValueError, match="examples"):
        augment.mixup({"spec": np.zeros((3, 2)), "labels": np.zeros((4, 2))}, rng)
