"""A video file -> the inputs of one MBT view: F RGB frames and a log-mel spectrogram (Sec. 3.2, 4.2).

`tokenise` returns one window of t = config.spec_seconds seconds; `views` the N uniformly spaced test
windows of the paper's inference (Sec. 4.2, "Inference"). Geometry comes from the MBTConfig, every
other choice from a `Preprocess` (plain frozen data). Times are seconds on the clip timeline of video.py.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from mbt_core.config import MBTConfig
from mbt_core.data import augment
from mbt_core.media import audio, video
from mbt_core.media.images import spectrogram_image, to_uint8
from mbt_core.media.video import MissingAudioError

_TIME_TOL_S = 1e-6


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a file becomes a view (Sec. 4.2); defaults follow the paper, then the official AudioSet config."""

    train: bool = False  # random window and augmentation (below) instead of the centred, centre-cropped one
    fps: float = 25.0  # frames are resampled to this rate
    sampling: str = "uniform"  # F frames at stride t*fps/F (AudioSet, VGGSound), or "consecutive" (EPIC)
    synchronous: bool = True  # False: in training each modality draws its own window (Sec. 4.3)
    short_side_ratio: float = 256 / 224  # short side scaled to round(image_size * ratio), then cropped
    crop_scale: tuple[float, float] = (0.9, 1.33)  # training scale jitter of the crop
    flip: float = 0.5  # training: probability of a left-right flip
    color_jitter: float = 0.8  # training: probability of colour jitter (brightness, saturation, contrast, hue)
    color_drop: float = 0.1  # training: probability of greyscale
    spec_time_masks: int = 1  # training SpecAugment, AST style (the official config: 4 masks of 48)
    spec_max_time: int = 192
    spec_freq_masks: int = 1
    spec_max_freq: int = 48
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
        if not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            bad("crop_scale", f"must be (low, high) with 0 < low <= high, got {self.crop_scale}")
        for p in ("flip", "color_jitter", "color_drop"):
            if not 0 <= getattr(self, p) <= 1:
                bad(p, f"a probability must lie in [0, 1], got {getattr(self, p)}")
        if (self.spec_mean is None) != (self.spec_std is None) or not (self.spec_std is None or self.spec_std > 0):
            bad("spec_std", f"give spec_mean and spec_std > 0, or neither; got {self.spec_mean}, {self.spec_std}")


@dataclasses.dataclass(frozen=True, eq=False)
class View:
    """One view of a clip as the model sees it: frames, spectrogram and their patch grids (Sec. 3.1, 4.2)."""

    frames: np.ndarray  # float32 (F, S, S, 3) in [-1, 1]
    spectrogram: np.ndarray  # float32 (100 t, mel_bins)
    padded: bool  # part of a window lay outside the clip/segment (or a stream): audio zeros, frames held
    audio_missing: bool  # no audio track: the spectrogram is zeros
    start: float  # the window [start, end) of the frames (s)
    end: float
    spec_start: float  # the window of the spectrogram: the same unless sampled asynchronously
    spec_end: float
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
             *, preprocess: Preprocess = Preprocess(), rng: np.random.Generator | None = None) -> View:
    """One view of a clip (Sec. 4.2): the window [start, start + t), t = config.spec_seconds.

    With start None the window is centred in [0, end) (or, when training, drawn at random in it; each
    modality on its own with `preprocess.synchronous=False`); `end` (default: the clip's end) bounds the
    segment, as for EPIC-Kitchens. `rng` drives training randomness (default: a fresh generator).
    """
    info = video.probe(video_path)
    rng = np.random.default_rng() if rng is None else rng
    lo, hi = _segment(info, 0.0 if start is None else start, end)
    t = config.spec_seconds
    if start is not None:
        windows = [(start, start)]
    elif not preprocess.train:
        centre = lo + max(hi - lo - t, 0.0) / 2
        windows = [(centre, centre)]
    else:
        room = max(hi - lo - t, 0.0)
        rgb_start = lo + rng.uniform(0.0, room)
        windows = [(rgb_start, rgb_start if preprocess.synchronous else lo + rng.uniform(0.0, room))]
    return _make_views(info, config, windows, lo, hi, preprocess, rng)[0]


def views(video_path: str | os.PathLike, config: MBTConfig, n: int = 4, start: float | None = None,
          end: float | None = None, *, preprocess: Preprocess = Preprocess(),
          rng: np.random.Generator | None = None) -> list[View]:
    """The `n` test views of a clip (Sec. 4.2, "Inference"): windows uniformly spaced over [start, end).

    The first starts at the segment's start, the last ends at its end; a segment shorter than the
    window gives n identical padded views. The file is decoded once for all of them.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    info = video.probe(video_path)
    lo, hi = _segment(info, 0.0 if start is None else start, end)
    starts = np.linspace(lo, lo + max(hi - lo - config.spec_seconds, 0.0), n)
    rng = np.random.default_rng() if rng is None else rng
    return _make_views(info, config, [(float(s), float(s)) for s in starts], lo, hi, preprocess, rng)


def _segment(info: video.MediaInfo, start: float, end: float | None) -> tuple[float, float]:
    """The part [lo, hi) of the clip a view may use."""
    if end is not None and not end > start:
        raise ValueError(f"{info.path}: empty segment [{start}, {end})")
    if not 0 <= start < info.duration:
        raise ValueError(f"{info.path}: start {start} lies outside the clip [0, {info.duration:.3f})")
    return start, info.duration if end is None else min(end, info.duration)


def _make_views(info: video.MediaInfo, config: MBTConfig, windows: list[tuple[float, float]], lo: float, hi: float,
                preprocess: Preprocess, rng: np.random.Generator) -> list[View]:
    """Views of (frame window start, audio window start) pairs, decoding each stream once for all of them."""
    t = config.spec_seconds
    times = [video.frame_times(w, t, config.rgb_frames, preprocess.sampling, preprocess.fps) for w, _ in windows]
    # Frames hold outside the segment and the video stream (a slack of one frame for stream start offsets).
    slack = 1.0 / preprocess.fps
    v_lo, v_hi = max(lo, info.video_start - slack), min(hi, info.video_end + slack)
    # The segment end is exclusive: 1 ms before it stays clear of the reader's timestamp tolerance.
    clamped = [np.clip(ts, lo, hi - 1e-3) for ts in times]
    frames = video.read_frames(info, np.concatenate(clamped),
                               round(config.image_size * preprocess.short_side_ratio))
    frames = frames.reshape(len(windows), config.rgb_frames, *frames.shape[1:])
    spectra, spec_padded, missing = _spectrograms(info, config, [s for _, s in windows], lo, hi, preprocess, rng)
    out = []
    for i, (rgb_start, spec_start) in enumerate(windows):
        out.append(View(
            frames=_frames(frames[i], config.image_size, preprocess, rng),
            spectrogram=spectra[i],
            padded=bool(spec_padded[i] or (times[i] < v_lo - _TIME_TOL_S).any() or (times[i] >= v_hi).any()),
            audio_missing=missing, start=rgb_start, end=rgb_start + t, spec_start=spec_start,
            spec_end=spec_start + t, frame_times=times[i], frame_size=tuple(frames.shape[2:4]),
            rgb_grid=config.grid("rgb"),
            spec_grid=config.grid("spec"), rgb_patch=config.patch_shape("rgb"),
            spec_patch=config.patch_shape("spec"), path=info.path))
    return out


def _frames(frames: np.ndarray, size: int, preprocess: Preprocess, rng: np.random.Generator) -> np.ndarray:
    """Crop (random with scale jitter when training, else central), flip and colour jitter; float32 [-1, 1]."""
    if not preprocess.train:
        return video.to_signed_unit(video.centre_crop(frames, size))
    frames = augment.random_flip(augment.random_crop(frames, size, rng, preprocess.crop_scale), rng, preprocess.flip)
    frames = frames.astype(np.float32) / 255.0
    return video.to_signed_unit(augment.color_jitter(frames, rng, preprocess.color_jitter, preprocess.color_drop))


def _spectrograms(info: video.MediaInfo, config: MBTConfig, starts: list[float], lo: float, hi: float,
                  preprocess: Preprocess, rng: np.random.Generator) -> tuple[list[np.ndarray], list[bool], bool]:
    """Log-mel of each audio window [s, s + t), normalised and (training) SpecAugmented; padding flags; missing."""
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
        if preprocess.train:  # masks set to 0: the mean, once normalised (as AST)
            spec = augment.spec_augment(spec, rng, time_masks=preprocess.spec_time_masks,
                                        max_time=preprocess.spec_max_time, freq_masks=preprocess.spec_freq_masks,
                                        max_freq=preprocess.spec_max_freq)
        spectra.append(spec)
        padded.append(not wave.valid[i:i + n].all())
    return spectra, padded, False
