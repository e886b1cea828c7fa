"""A video file -> the inputs of one MBT view: F RGB frames and a log-mel spectrogram (Sec. 3.2, 4.2).

`tokenise` returns one window of t = config.spec_seconds seconds (centred unless a start is given); `views`
the N uniformly spaced test windows of the paper's inference (Sec. 4.2, "Inference"), one centred window
for N = 1. Geometry comes from the MBTConfig, every other choice from a `Preprocess` (plain frozen data):
only what shapes a view. Training randomness (which window, crops, colour, SpecAugment) is not here: it
acts on cached windows in `augment.augment_example`, configured by the run's `train` section.
Times are seconds on the clip timeline of video.py.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from mbt_core.config import MBTConfig
from mbt_core.media import audio, video
from mbt_core.media.images import spectrogram_image, to_uint8
from mbt_core.media.video import MissingAudioError

_TIME_TOL_S = 1e-6


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a file becomes a view (Sec. 4.2); defaults follow the paper, then the official AudioSet config."""

    fps: float = 25.0  # frames are resampled to this rate
    sampling: str = "uniform"  # F frames at stride t*fps/F (AudioSet, VGGSound), or "consecutive" (EPIC)
    short_side_ratio: float = 256 / 224  # short side scaled to round(image_size * ratio), then cropped
    spec_mean: float | None = None  # dataset statistics (`audio.spectrogram_stats`); None: no normalisation
    spec_std: float | None = None
    on_missing_audio: str = "zeros"  # no audio track: "zeros" (spectrogram of zeros, audio_missing=True) or "error"

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"Preprocess.{field}: {why}")

        if self.sampling not in ("uniform", "consecutive"):
            bad("sampling", f"must be 'uniform' or 'consecutive', got {self.sampling!r}")
        if self.on_missing_audio not in ("zeros", "error"):
            bad("on_missing_audio", f"must be 'zeros' or 'error', got {self.on_missing_audio!r}")
        if not self.fps > 0:
            bad("fps", f"must be > 0, got {self.fps}")
        if not self.short_side_ratio >= 1:
            bad("short_side_ratio", f"must be >= 1 (the crop lies inside the frame), got {self.short_side_ratio}")
        if (self.spec_mean is None) != (self.spec_std is None) or not (self.spec_std is None or self.spec_std > 0):
            bad("spec_std", f"give spec_mean and spec_std > 0, or neither; got {self.spec_mean}, {self.spec_std}")


@dataclasses.dataclass(frozen=True, eq=False)
class View:
    """One view of a clip as the model sees it: frames, spectrogram and their patch grids (Sec. 3.1, 4.2)."""

    frames: np.ndarray  # float32 (F, S, S, 3) in [-1, 1]
    spectrogram: np.ndarray  # float32 (100 t, mel_bins)
    padded: bool  # part of a window lay outside the clip/segment (or a stream): audio zeros, frames held
    audio_missing: bool  # no audio track: the spectrogram is zeros
    start: float  # the window [start, end) of the frames and the spectrogram (s)
    end: float
    frame_times: np.ndarray  # (F,) times of the sampled frames (s)
    frame_size: tuple[int, int]  # (h, w) of the decoded frames (rotation applied) after the short-side resize
    rgb_grid: tuple[int, ...]  # config.grid("rgb"): (t, h, w) patches
    spec_grid: tuple[int, ...]  # config.grid("spec"): (time, freq) patches
    rgb_patch: tuple[int, ...]  # config.patch_shape("rgb"): (tubelet, h, w)
    spec_patch: tuple[int, ...]  # config.patch_shape("spec"): (time, freq)
    path: str = ""

    def patch_boundaries(self, modality: str) -> tuple[np.ndarray, ...]:
        """Edges of the patch grid (Eq. 1), one array per axis: frames (t, y, x) or spectrogram (time, mel)."""
        if modality not in ("rgb", "spec"):
            raise ValueError(f"modality must be 'rgb' or 'spec', got {modality!r}")
        grid, patch = (self.rgb_grid, self.rgb_patch) if modality == "rgb" else (self.spec_grid, self.spec_patch)
        return tuple(np.arange(g + 1) * p for g, p in zip(grid, patch))

    def draw_patches(self, modality: str, index: int = 0, colour: tuple[int, ...] = (255, 255, 0)) -> np.ndarray:
        """RGB uint8 image of frame `index` or of the spectrogram (time across, low mel below), patches drawn."""
        if modality == "rgb":
            image = to_uint8(self.frames[index]).copy()
            rows, cols = self.patch_boundaries("rgb")[1:]
        else:
            image = spectrogram_image(self.spectrogram)
            cols, rows = self.patch_boundaries("spec")
            rows = len(image) - rows  # mel edges counted from the bottom
        # The last edge lies one past the image: draw it on the last pixel.
        image[np.clip(rows, 0, image.shape[0] - 1)] = colour
        image[:, np.clip(cols, 0, image.shape[1] - 1)] = colour
        return image


def tokenise(video_path: str | os.PathLike, config: MBTConfig, start: float | None = None, end: float | None = None,
             *, preprocess: Preprocess = Preprocess()) -> View:
    """One view of a clip (Sec. 4.2): the window [start, start + t), t = config.spec_seconds.

    With start None the window is centred in [0, end) (the official single-clip evaluation); `end`
    (default: the clip's end) bounds the segment, as for EPIC-Kitchens.
    """
    info = video.probe(video_path)
    lo, hi = _segment(info, 0.0 if start is None else start, end)
    first = lo if start is not None else window_starts(lo, hi, config.spec_seconds, 1)[0]
    return _make_views(info, config, [first], lo, hi, preprocess)[0]


def views(video_path: str | os.PathLike, config: MBTConfig, n: int = 4, start: float | None = None,
          end: float | None = None, *, preprocess: Preprocess = Preprocess()) -> list[View]:
    """The `n` test views of a clip (Sec. 4.2, "Inference"): windows uniformly spaced over [start, end).

    For n > 1 the first starts at the segment's start and the last ends at its end; n = 1 is the centred
    window. A segment shorter than the window gives n identical padded views. The file is decoded once.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    info = video.probe(video_path)
    lo, hi = _segment(info, 0.0 if start is None else start, end)
    return _make_views(info, config, window_starts(lo, hi, config.spec_seconds, n), lo, hi, preprocess)


def window_starts(lo: float, hi: float, seconds: float, n: int) -> list[float]:
    """Starts of `n` windows of `seconds` in [lo, hi): uniformly spaced from lo to hi - seconds; centred for n = 1."""
    room = max(hi - lo - seconds, 0.0)
    if n == 1:
        return [lo + room / 2]
    return [float(s) for s in np.linspace(lo, lo + room, n)]


def _segment(info: video.MediaInfo, start: float, end: float | None) -> tuple[float, float]:
    """The part [lo, hi) of the clip a view may use."""
    if end is not None and not end > start:
        raise ValueError(f"{info.path}: empty segment [{start}, {end})")
    if not 0 <= start < info.duration:
        raise ValueError(f"{info.path}: start {start} lies outside the clip [0, {info.duration:.3f})")
    return start, info.duration if end is None else min(end, info.duration)


def _make_views(info: video.MediaInfo, config: MBTConfig, starts: list[float], lo: float, hi: float,
                preprocess: Preprocess) -> list[View]:
    """Views of the windows at `starts`, decoding each stream once for all of them."""
    t = config.spec_seconds
    times = [video.frame_times(s, t, config.rgb_frames, preprocess.sampling, preprocess.fps) for s in starts]
    # Frames hold outside the segment and the video stream (a slack of one frame for stream start offsets).
    slack = 1.0 / preprocess.fps
    v_lo, v_hi = max(lo, info.video_start - slack), min(hi, info.video_end + slack)
    # The segment end is exclusive: 1 ms before it stays clear of the reader's timestamp tolerance.
    clamped = [np.clip(ts, lo, hi - 1e-3) for ts in times]
    frames = video.read_frames(info, np.concatenate(clamped),
                               round(config.image_size * preprocess.short_side_ratio))
    frames = frames.reshape(len(starts), config.rgb_frames, *frames.shape[1:])
    spectra, spec_padded, missing = _spectrograms(info, config, starts, lo, hi, preprocess)
    out = []
    for i, first in enumerate(starts):
        out.append(View(
            frames=video.to_signed_unit(video.centre_crop(frames[i], config.image_size)),
            spectrogram=spectra[i],
            padded=bool(spec_padded[i] or (times[i] < v_lo - _TIME_TOL_S).any() or (times[i] >= v_hi).any()),
            audio_missing=missing, start=first, end=first + t, frame_times=times[i], frame_size=tuple(frames.shape[2:4]),
            rgb_grid=config.grid("rgb"),
            spec_grid=config.grid("spec"), rgb_patch=config.patch_shape("rgb"),
            spec_patch=config.patch_shape("spec"), path=info.path))
    return out


def _spectrograms(info: video.MediaInfo, config: MBTConfig, starts: list[float], lo: float, hi: float,
                  preprocess: Preprocess) -> tuple[list[np.ndarray], list[bool], bool]:
    """Log-mel of each audio window [s, s + t), normalised when the Preprocess has statistics; padding flags; missing."""
    rate, n, first = audio.SAMPLE_RATE, int(round(config.spec_seconds * audio.SAMPLE_RATE)), min(starts)
    offsets = [int(round((s - first) * rate)) for s in starts]
    try:
        if not info.has_audio:
            raise MissingAudioError(f"{info.path}: no audio track (Preprocess(on_missing_audio='zeros') reads "
                                    f"it as silent video)")
        wave = audio.load_audio(info.path, first, (max(offsets) + n) / rate, lo=lo, hi=hi, origin=info.origin)
    except MissingAudioError:
        if preprocess.on_missing_audio == "error":
            raise
        silent = np.zeros((config.spec_frames, config.mel_bins), np.float32)
        return [silent.copy() for _ in starts], [False] * len(starts), True
    spectra, padded = [], []
    for i in offsets:
        spec = audio.spectrogram(wave.samples[i:i + n], config.mel_bins, config.spec_frames)
        if preprocess.spec_mean is not None:
            spec = audio.normalise(spec, preprocess.spec_mean, preprocess.spec_std)
        spectra.append(spec)
        padded.append(not wave.valid[i:i + n].all())
    return spectra, padded, False
