"""Decoding (Sec. 4.2): frames resampled to 25 fps by timestamps, audio at 16 kHz mono, the pinned log-mel.

References are independent of the code under test: frame indices computed from the writer's timestamps,
librosa's log-mel of the analytic signal, closed forms for channel mixing and statistics.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math  # noqa: E402

import av  # noqa: E402
import librosa  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mbt_core.media import audio  # noqa: E402
from mbt_core.media import video  # noqa: E402
import media  # noqa: E402  (tests/ is on sys.path: conftest)


# ----- frames -----

def test_frame_times_closed_form():
    # Uniform: stride t*25/F on the 25 fps grid from the window start; consecutive: stride 1, centred.
    np.testing.assert_allclose(video.frame_times(1.0, 8.0, 8), 1.0 + np.arange(8))
    np.testing.assert_allclose(video.frame_times(0.0, 4.0, 16), np.floor(np.arange(16) * 6.25) / 25)
    np.testing.assert_allclose(video.frame_times(2.0, 2.0, 32, "consecutive"), (50 + 9 + np.arange(32)) / 25)
    # A window starting between grid frames begins at the next one: no frame before the window.
    np.testing.assert_allclose(video.frame_times(1.33, 1.0, 2), [1.36, 1.84])
    with pytest.raises(ValueError, match="sampling"):
        video.frame_times(0.0, 1.0, 4, "random")


@pytest.mark.parametrize("fps,codec", [(30, "libx264"), (12.5, "libx264"), (30, "mpeg4")])
@pytest.mark.parametrize("start", [0.3, 5.2])  # 5.2 s: the reader seeks instead of decoding from 0
def test_sampled_frame_indices(tmp_path, fps, codec, start):
    n = int(8 * fps)
    path = media.write_video(tmp_path / "v.mp4", media.index_frames(n), fps=fps, codec=codec)
    info = video.probe(path)
    assert info.duration == pytest.approx(8.0) and info.fps == pytest.approx(fps)
    times = video.frame_times(start, 2.0, 8)
    got = [media.decode_index(f) for f in video.read_frames(info, times, 24)]
    # Sample-and-hold: the source frame on screen at t is number floor(t * fps).
    assert got == [int(math.floor(t * fps + 1e-9)) for t in times]


def test_variable_frame_rate(tmp_path):
    rng = np.random.default_rng(0)
    stamps = np.round(np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 0.12, 59))]), 3)
    stamps[40:] += 0.8  # one long gap, longer than any before it
    path = media.write_video(tmp_path / "vfr.mp4", media.index_frames(60), times=stamps)
    info = video.probe(path)
    times = np.concatenate([video.frame_times(0.0, stamps[-1], 24), [stamps[39] + 0.5, 1.7]])
    expected = np.searchsorted(stamps, times + 1e-9, side="right") - 1
    assert [media.decode_index(f) for f in video.read_frames(info, times, 24)] == list(expected)
    # Alone, a time inside the gap defeats the seek-and-look-ahead guess: the reader must rescan.
    assert media.decode_index(video.read_frames(info, [stamps[39] + 0.5], 24)[0]) == 39


def test_frames_resized_and_cropped(tmp_path):
    path = media.write_video(tmp_path / "v.mp4", media.index_frames(10, height=48, width=64), fps=25)
    frames = video.read_frames(video.probe(path), [0.0, 0.2], 27)
    assert frames.shape == (2, 27, 36, 3) and frames.dtype == np.uint8
    crop = video.centre_crop(frames, 24)
    np.testing.assert_array_equal(crop, frames[:, 1:25, 6:30])
    assert video.to_signed_unit(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]


# ----- bad input -----

def _bad_files(tmp_path):
    files = {"empty": tmp_path / "empty.mp4", "garbage": tmp_path / "garbage.mp4"}
    files["empty"].write_bytes(b"")
    files["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    files["no_video"] = media.write_video(tmp_path / "audio_only.mp4", None, audio=media.tone(440, 1, 16000))
    whole = media.write_video(tmp_path / "whole.mp4", media.index_frames(100), faststart=False).read_bytes()
    files["truncated_index"] = tmp_path / "cut_index.mp4"  # the index (moov) comes last: cut away
    files["truncated_index"].write_bytes(whole[: len(whole) // 2])
    return files


@pytest.mark.parametrize("case,reason", [("empty", "empty file"), ("garbage", "cannot read"),
                                         ("no_video", "no video track"), ("truncated_index", "cannot read")])
def test_bad_files_name_the_file(tmp_path, case, reason):
    path = _bad_files(tmp_path)[case]
    with pytest.raises(video.VideoDecodeError, match=reason) as err:
        video.probe(path)
    assert str(path) in str(err.value)


def test_truncated_data_is_an_error_not_padding(tmp_path):
    # The index survives (faststart) but the data stops half way: frames and audio past the cut are lost.
    whole = media.write_video(tmp_path / "whole.mp4", media.index_frames(200), fps=25,
                              audio=media.tone(440, 8, 16000), faststart=True).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(whole[: len(whole) // 2])
    info = video.probe(path)
    assert info.duration == pytest.approx(8.0)
    video.read_frames(info, [0.0, 0.5], 24)  # the first part still decodes
    with pytest.raises(video.VideoDecodeError, match="truncated") as err:
        video.read_frames(info, video.frame_times(4.0, 4.0, 8), 24)
    assert str(path) in str(err.value)
    with pytest.raises(video.VideoDecodeError) as err:
        audio.load_audio(path, 5.0, 2.0)
    assert str(path) in str(err.value)


def test_corrupt_middle_is_an_error(tmp_path):
    # A tenth of the file overwritten a third of the way in: the decoder gives up there; so must we.
    data = bytearray(media.write_video(tmp_path / "whole.mp4", media.index_frames(250), fps=25,
                                       audio=media.tone(440, 10, 16000), faststart=True).read_bytes())
    n = len(data)
    data[n // 3: n // 3 + n // 10] = np.random.default_rng(0).integers(0, 256, n // 10, np.uint8).tobytes()
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(video.VideoDecodeError, match="corrupt") as err:
        video.read_frames(video.probe(path), video.frame_times(3.0, 4.0, 8), 24)
    assert str(path) in str(err.value)


def test_missing_audio_track(tmp_path):
    path = media.write_video(tmp_path / "silent.mp4", media.index_frames(25))
    assert not video.probe(path).has_audio
    with pytest.raises(video.MissingAudioError, match="audio") as err:
        audio.load_audio(path, 0.0, 1.0)
    assert str(path) in str(err.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        video.probe("nope.mp4")


# ----- audio -----

def test_channels_mixed_to_mono_any_sample_format():
    left, right = np.linspace(-1, 1, 64), np.linspace(1, 0, 64)
    expected = (left + right) / 2
    cases = [("fltp", np.stack([left, right]).astype(np.float32), 1e-7),
             ("flt", np.stack([left, right], 1).reshape(1, -1).astype(np.float32), 1e-7),  # interleaved
             ("s16", np.round(np.stack([left, right], 1).reshape(1, -1) * 32767).astype(np.int16), 1e-4),
             ("s32p", np.round(np.stack([left, right]) * (2**31 - 1)).astype(np.int32), 1e-7)]
    for fmt, data, tol in cases:
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
        frame.sample_rate = 16000
        np.testing.assert_allclose(audio._mono(frame), expected, atol=tol, err_msg=fmt)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_onset_lands_on_time_at_any_rate(tmp_path, rate):
    # Silence, then a tone from exactly 1.0 s: AAC priming or resampling must not move the onset.
    x = media.tone(1000, 2.0, rate, channels=2)
    x[:, : rate] = 0.0
    path = media.write_video(tmp_path / "onset.mp4", media.index_frames(50), audio=x, rate=rate)
    wave = audio.load_audio(path, 0.5, 1.0)
    assert wave.samples.dtype == np.float32 and wave.samples.shape == (16000,) and wave.valid.all()
    onset = 0.5 + np.argmax(np.abs(wave.samples) > 0.2) / 16000
    assert abs(onset - 1.0) < 0.001


@pytest.mark.parametrize("rate,channels", [(44100, 2), (16000, 1), (22050, 1)])
def test_log_mel_matches_librosa_of_the_analytic_signal(tmp_path, rate, channels):
    path = media.write_video(tmp_path / "sine.mp4", media.index_frames(75),
                             audio=media.tone(1000, 3.0, rate, channels=channels), rate=rate)
    wave = audio.load_audio(path, 1.5, 1.0)  # 1.5 s into the clip: the reader seeks
    spec = audio.spectrogram(wave.samples, 128, 100)
    # Independent reference: the pinned log-mel of the tone evaluated on the 16 kHz grid of the window.
    t = 1.5 + np.arange(16000) / 16000
    mel = librosa.feature.melspectrogram(y=0.5 * np.sin(2 * np.pi * 1000 * t), sr=16000, n_fft=400,
                                         win_length=400, hop_length=160, window="hamming", n_mels=128,
                                         fmin=0, fmax=8000, power=2)
    ref = np.log(mel + 1e-6).T[:100]
    centres = librosa.mel_frequencies(128 + 2, fmin=0, fmax=8000)[1:-1]
    assert spec.shape == (100, 128) and spec.dtype == np.float32
    assert spec.mean(0).argmax() == np.abs(centres - 1000).argmin()
    strong = ref > ref.max() - math.log(100)  # bins within 20 dB of the peak: the codec's tolerance
    assert np.abs(spec - ref)[strong].max() < 0.05


def test_matroska_pcm_with_a_millisecond_clock(tmp_path):
    # 1000-sample PCM frames at 48 kHz have timestamps rounded to 1 ms: no gaps, no shift, right frames.
    x = media.tone(1000, 4.0, 48000, channels=2)
    x[:, : 2 * 48000] = 0.0
    path = media.write_video(tmp_path / "clip.mkv", media.index_frames(120), fps=30, audio=x, rate=48000,
                             audio_codec="pcm_s16le", container="matroska")
    wave = audio.load_audio(path, 1.5, 1.0)
    assert wave.valid.all() and abs(1.5 + np.argmax(np.abs(wave.samples) > 0.2) / 16000 - 2.0) < 0.001
    times = video.frame_times(1.0, 2.0, 8)
    got = [media.decode_index(f) for f in video.read_frames(video.probe(path), times, 24)]
    assert got == [int(math.floor(t * 30 + 1e-9)) for t in times]


# The downmix rule, written out independently of libswresample: FFmpeg's default matrix for a mono output
# (ITU-R BS.775: front left/right at 1/sqrt(2), centre at 1, back/side at 1/2, LFE at 0), divided by the
# sum of its weights (rematrix_maxval=1). Stereo is then the mean of its two channels.
_WEIGHT = {"FL": 1 / math.sqrt(2), "FR": 1 / math.sqrt(2), "FC": 1.0, "LFE": 0.0,
           "BL": 0.5, "BR": 0.5, "SL": 0.5, "SR": 0.5}


def _downmix_weights(layout: str) -> np.ndarray:
    w = np.array([_WEIGHT[c.name] for c in av.AudioLayout(layout).channels])
    return w / w.sum()


def test_downmix_rule_of_each_layout():
    assert np.allclose(_downmix_weights("stereo"), [0.5, 0.5])  # the mean of channels
    for layout in ("mono", "stereo", "quad", "5.1", "5.1(side)", "7.1"):
        n = len(av.AudioLayout(layout).channels)
        x = np.linspace(-0.5, 0.5, n * 64, dtype=np.float32).reshape(64, n)  # a different ramp per channel
        for fmt in ("flt", "s16"):  # packed: PyAV 18 cannot build planar frames of 8 channels
            data = x.reshape(1, -1) if fmt == "flt" else np.round(x.reshape(1, -1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            frame.sample_rate = 16000
            np.testing.assert_allclose(audio._mono(frame), x @ _downmix_weights(layout), atol=1e-4,
                                       err_msg=f"{layout} {fmt}")


@pytest.mark.parametrize("layout,rate,codec,container", [
    ("5.1", 16000, "aac", "mp4"), ("7.1", 48000, "aac", "mp4"),  # AAC decodes to planar float
    ("7.1", 44100, "pcm_s16le", "matroska"), ("stereo", 22050, "pcm_s16le", "matroska")])  # packed s16
def test_multichannel_tracks_decode_to_the_downmix(tmp_path, layout, rate, codec, container):
    # One sine per channel at its own frequency: the amplitude of each in the mono signal is its weight.
    # (An 8-channel planar AAC track used to crash the process in frame.to_ndarray.)
    names = [c.name for c in av.AudioLayout(layout).channels]
    freqs = 300.0 + 200.0 * np.arange(len(names))
    t = np.arange(2 * rate) / rate
    x = (0.4 * np.sin(2 * np.pi * freqs[:, None] * t)).astype(np.float32)
    path = media.write_video(tmp_path / f"surround.{'mp4' if container == 'mp4' else 'mkv'}",
                             media.index_frames(50), audio=x, rate=rate, layout=layout, audio_codec=codec,
                             container=container)
    wave = audio.load_audio(path, 0.5, 1.0)
    assert wave.valid.all()
    s = 0.5 + np.arange(16000) / 16000
    for name, f, w in zip(names, freqs, _downmix_weights(layout)):
        amplitude = 2 * abs(np.mean(wave.samples * np.exp(-2j * np.pi * f * s)))  # Fourier coefficient at f
        assert amplitude == pytest.approx(0.4 * w, abs=0.01), name


def test_window_beyond_the_audio_is_zero_and_marked(tmp_path):
    path = media.write_video(tmp_path / "short.mp4", media.index_frames(25),
                             audio=media.tone(1000, 1.0, 16000), rate=16000)
    wave = audio.load_audio(path, 0.5, 1.0, hi=1.0)
    assert wave.valid[:8000].all() and not wave.valid[8000:].any()
    assert np.abs(wave.samples[:7990]).max() > 0.4 and not wave.samples[8000:].any()


def test_audio_track_starting_late(tmp_path):
    # Audio from 2 s on: before it the window is zeros (not an error), and the onset stays at 2 s.
    path = media.write_video(tmp_path / "late.mp4", media.index_frames(100), audio=media.tone(1000, 1.0, 16000),
                             rate=16000, audio_start=2.0)
    early = audio.load_audio(path, 0.0, 1.0)
    assert not early.valid.any() and not early.samples.any()
    wave = audio.load_audio(path, 1.5, 1.0)
    assert not wave.valid[:6000].any() and wave.valid[8000:].all()
    assert abs(1.5 + np.argmax(np.abs(wave.samples) > 0.2) / 16000 - 2.0) < 0.001


def test_spectrogram_length_is_exactly_100_per_second():
    for seconds in (0.16, 1.0, 8.0):
        spec = audio.spectrogram(np.zeros(int(seconds * 16000), np.float32), 32, int(round(100 * seconds)))
        assert spec.shape == (int(round(100 * seconds)), 32)
        assert np.all(spec == np.float32(math.log(1e-6)))
    # A short input is padded at its end with the log-mel of silence.
    spec = audio.spectrogram(np.ones(1600, np.float32), 8, 20)
    assert spec.shape == (20, 8) and np.all(spec[11:] == np.float32(audio.SILENCE))


def test_spectrogram_stats_and_normalise():
    rng = np.random.default_rng(0)
    specs = [rng.normal(3.0, 2.0, (n, 8)) for n in (5, 50, 1)]
    flat = np.concatenate([s.ravel() for s in specs])
    mean, std = audio.spectrogram_stats(iter(specs))
    assert mean == pytest.approx(flat.mean()) and std == pytest.approx(flat.std())
    normed = np.concatenate([audio.normalise(s, mean, std).ravel() for s in specs])
    assert normed.dtype == np.float32 and normed.mean() == pytest.approx(0, abs=1e-6)
    assert normed.std() == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError):
        audio.spectrogram_stats([])


def test_media_helper_round_trips_indices():
    assert [media.decode_index(np.array(media.index_colour(i), np.uint8)) for i in range(512)] == list(range(512))
