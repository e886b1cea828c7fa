"""`tokenise` and `views` (Sec. 4.2): config geometry, windows, padding, missing audio, the centred single view.

Test clips are tiny mp4s whose frame colour encodes the frame index (tests/media.py), so which instants a
view saw is checked against the window arithmetic of the paper: F frames at stride t*25/F from the start.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math  # noqa: E402

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import media  # noqa: E402  (tests/ is on sys.path: conftest)
from mbt_core.config import MBTConfig  # noqa: E402
from mbt_core.data.tokenise import Preprocess, View, tokenise, views  # noqa: E402
from mbt_core.media import audio  # noqa: E402
from mbt_core.media.video import MissingAudioError, VideoDecodeError  # noqa: E402

TINY = MBTConfig.preset("tiny")  # 16 frames of 24^2, 4 s of 32-bin log-mel


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """10 s at 25 fps, 64x48, stereo 44.1 kHz AAC: a 1 kHz tone that starts at 5 s."""
    x = media.tone(1000, 10.0, 44100, channels=2)
    x[:, : 5 * 44100] = 0.0
    return media.write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", media.index_frames(250),
                             audio=x, rate=44100)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """2 s at 25 fps with a tone, shorter than the 4 s window of `tiny`."""
    return media.write_video(tmp_path_factory.mktemp("short") / "short.mp4", media.index_frames(50),
                             audio=media.tone(1000, 2.0, 16000), rate=16000)


def _indices(view: View) -> list[int]:
    return [media.decode_index(f) for f in view.frames]


@pytest.mark.parametrize("preset", ["tiny", "paper-b16", "micro"])
def test_shapes_follow_the_config(clip, preset):
    config = MBTConfig.preset(preset)
    view = tokenise(clip, config)
    assert view.frames.shape == config.input_shape("rgb")[:-1] + (3,) and view.frames.dtype == np.float32
    assert view.spectrogram.shape == (config.spec_frames, config.mel_bins) == (100 * config.spec_seconds,
                                                                               config.mel_bins)
    assert view.spectrogram.dtype == np.float32
    assert view.frames.min() >= -1.0 and view.frames.max() <= 1.0
    assert view.rgb_grid == config.grid("rgb") and view.spec_grid == config.grid("spec")
    assert not view.padded and not view.audio_missing


def test_centred_window_samples_the_paper_stride(clip):
    view = tokenise(clip, TINY)
    assert (view.start, view.end) == (3.0, 7.0)
    # 16 frames over 4 s at 25 fps: stride 6.25 source frames, from the window's first frame (index 75).
    assert _indices(view) == [75 + math.floor(k * 6.25) for k in range(16)]
    np.testing.assert_allclose(view.frame_times, (75 + np.floor(np.arange(16) * 6.25)) / 25)


def test_explicit_start_and_the_audio_it_sees(clip):
    view = tokenise(clip, TINY, start=4.0)
    assert view.start == 4.0 and _indices(view)[0] == 100
    # The tone starts at 5 s: silence for the first 100 spectrogram frames, then a peak at 1 kHz.
    spec = view.spectrogram
    assert spec[:95].max() < -10 and spec[105:].max() > 0
    centres = librosa.mel_frequencies(TINY.mel_bins + 2, fmin=0, fmax=8000)[1:-1]
    assert spec[110:].mean(0).argmax() == np.abs(centres - 1000).argmin()


def test_end_bounds_the_segment(clip):
    # An EPIC-style segment [4, 6) with a 4 s window: frames after 6 s hold the last frame before it,
    # audio after 6 s is zeros (the log-mel of silence), and the view says it was padded.
    view = tokenise(clip, TINY, start=4.0, end=6.0)
    assert view.padded
    times = 4.0 + np.floor(np.arange(16) * 6.25) / 25
    assert _indices(view) == [min(int(round(t * 25)), 149) for t in times]
    assert np.all(view.spectrogram[210:] == np.float32(audio.SILENCE))
    assert view.spectrogram[110:190].max() > 0


def test_clip_shorter_than_the_window(short_clip):
    view = tokenise(short_clip, TINY)
    assert view.padded and view.start == 0.0
    assert _indices(view) == [min(math.floor(k * 6.25), 49) for k in range(16)]  # last frame repeated
    assert view.spectrogram[10:190].max() > 0 and np.all(view.spectrogram[210:] == np.float32(audio.SILENCE))


def test_views_cover_the_clip_and_match_single_views(clip):
    config = MBTConfig.preset("micro")  # 0.16 s windows
    got = views(clip, config, n=4)
    assert [v.start for v in got] == pytest.approx([0.0, 9.84 / 3, 2 * 9.84 / 3, 9.84])
    for v in got:  # decoding once for all views gives what each single view gives
        single = tokenise(clip, config, start=v.start)
        np.testing.assert_array_equal(v.frames, single.frames)
        np.testing.assert_allclose(v.spectrogram, single.spectrogram, atol=1e-4)  # resampled apart
        assert not v.padded
    assert len(views(clip, TINY)) == 4 and len(views(clip, TINY, n=1)) == 1


def test_views_of_a_segment_and_of_a_short_clip(clip, short_clip):
    got = views(clip, TINY, n=3, start=2.0, end=8.0)
    assert [v.start for v in got] == pytest.approx([2.0, 3.0, 4.0])
    short = views(short_clip, TINY, n=4)
    assert all(v.padded and v.start == 0.0 for v in short)
    np.testing.assert_array_equal(short[0].frames, short[3].frames)


def test_consecutive_sampling(clip):
    view = tokenise(clip, TINY, start=2.0, preprocess=Preprocess(sampling="consecutive"))
    # 16 consecutive 25 fps frames centred in [2, 6): from 50 + (100 - 16) / 2 = 92.
    assert _indices(view) == list(range(92, 108))


def test_missing_audio(tmp_path):
    path = media.write_video(tmp_path / "mute.mp4", media.index_frames(125))
    view = tokenise(path, TINY)
    assert view.audio_missing and not view.padded
    assert view.spectrogram.shape == (400, 32) and not view.spectrogram.any()
    with pytest.raises(MissingAudioError, match="audio") as err:
        tokenise(path, TINY, preprocess=Preprocess(on_missing_audio="error"))
    assert str(path) in str(err.value) and isinstance(err.value, VideoDecodeError)


def test_one_view_is_the_centred_window(clip, short_clip):
    # The closed form: a clip [0, D) and a window t give the one view [(D - t) / 2, (D + t) / 2).
    for config in (TINY, MBTConfig.preset("micro")):
        (view,) = views(clip, config, n=1)
        assert view.start == pytest.approx((10.0 - config.spec_seconds) / 2)
        np.testing.assert_array_equal(view.frames, tokenise(clip, config).frames)
    (segment,) = views(clip, TINY, n=1, start=2.0, end=8.0)  # [2, 8): (2 + 8 - 4) / 2
    assert segment.start == pytest.approx(3.0)
    assert views(short_clip, TINY, n=1)[0].start == 0.0  # no room: the window starts at the clip


def test_normalisation_with_dataset_statistics(clip):
    raw = tokenise(clip, TINY).spectrogram
    mean, std = audio.spectrogram_stats([raw])
    normed = tokenise(clip, TINY, preprocess=Preprocess(spec_mean=mean, spec_std=std)).spectrogram
    np.testing.assert_allclose(normed, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    assert normed.mean() == pytest.approx(0.0, abs=1e-4)


def test_image_size_sets_the_short_side(clip):
    # Evaluation: short side round(S * 256 / 224), then the central S x S crop of the 64x48 frame.
    config = MBTConfig.preset("tiny", image_size=32)
    view = tokenise(clip, config)
    assert view.frames.shape == (16, 32, 32, 3)


def test_patch_boundaries_and_drawing(clip):
    view = tokenise(clip, TINY)
    t, y, x = view.patch_boundaries("rgb")
    assert list(t) == [0, 2, 4, 6, 8, 10, 12, 14, 16] and list(y) == list(x) == [0, 8, 16, 24]
    time, mel = view.patch_boundaries("spec")
    assert time[-1] == 400 and list(mel) == [0, 16, 32] and len(time) == view.spec_grid[0] + 1
    image = view.draw_patches("rgb", index=3, colour=(255, 0, 255))
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8
    assert np.all(image[8] == (255, 0, 255)) and np.all(image[:, 16] == (255, 0, 255))
    spec_image = view.draw_patches("spec")
    assert spec_image.shape == (32, 400, 3) and np.all(spec_image[:, 16] == (255, 255, 0))


def test_bad_arguments(clip):
    with pytest.raises(ValueError, match="outside the clip"):
        tokenise(clip, TINY, start=12.0)
    with pytest.raises(ValueError, match="empty segment"):
        views(clip, TINY, start=3.0, end=2.0)
    with pytest.raises(ValueError, match="n must be"):
        views(clip, TINY, n=0)
    for field, value in [("sampling", "random"), ("on_missing_audio", "skip"), ("spec_std", 0.0), ("fps", 0)]:
        with pytest.raises(ValueError, match=f"Preprocess.{field}"):
            Preprocess(**{field: value})
