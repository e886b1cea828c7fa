"""RGB frames of a video clip (Sec. 4.2): decode with OpenCV, resample to 25 fps by timestamps, sample, resize.

All times are seconds on the *clip timeline*: 0 is the container's start time, so audio (audio.py) and
frames of one file share a clock. Frame-rate resampling is sample-and-hold: the 25 fps frame at time t is
the source frame on screen at t (the last one whose timestamp is <= t), whatever the source rate or its
variation (VFR), so `frame_times` fixes exactly which instants are seen.

Bad files raise VideoDecodeError naming the file: unreadable, empty, without a video track, or with
frames that stop before the declared end (truncated, or damaged so that decoding gives up). Damage the
decoder conceals inside a frame cannot be seen through OpenCV and is not reported.
"""
from __future__ import annotations

import dataclasses
import math
import os

import av
import cv2
import numpy as np

# Seek (instead of decoding from the start) when the first frame needed is this far into the video;
# land this much earlier than needed, as OpenCV's seek is frame-number based and inexact for VFR video.
SEEK_AFTER_S = 1.0
SEEK_MARGIN_S = 1.0
_TIME_TOL_S = 1e-4  # timestamps are rounded to the container's clock


class VideoDecodeError(ValueError):
    """A media file that cannot be decoded as asked; the message names the file and the reason."""


class MissingAudioError(VideoDecodeError):
    """A video file without an audio track where audio was required."""


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What the container declares about a video file, on the clip timeline (seconds)."""

    path: str
    duration: float  # the clip: [0, duration)
    origin: float  # container timestamp of clip time 0
    video_start: float  # first and end of the video stream's frames
    video_end: float
    fps: float  # average frame rate as declared (informative: sampling uses timestamps)
    width: int  # coded size: a clip with rotation metadata decodes to frames of height x width
    height: int
    has_audio: bool


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read a video file's streams and clock (PyAV, no decoding); raise VideoDecodeError on a bad file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes), not a video")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video track (streams: "
                                       f"{[s.type for s in container.streams] or 'none'})")
            stream = container.streams.video[0]
            origin = container.start_time / av.time_base if container.start_time is not None else 0.0
            tb = float(stream.time_base)
            video_start = stream.start_time * tb - origin if stream.start_time is not None else 0.0
            duration = container.duration / av.time_base if container.duration else None
            video_end = video_start + stream.duration * tb if stream.duration else duration
            if duration is None or video_end is None:
                raise VideoDecodeError(f"{path}: the container declares no duration")
            rate = stream.average_rate or stream.guessed_rate
            return MediaInfo(path=path, duration=max(duration, video_end), origin=origin,
                             video_start=video_start, video_end=video_end,
                             fps=float(rate) if rate else 0.0,
                             width=stream.codec_context.width, height=stream.codec_context.height,
                             has_audio=bool(container.streams.audio))
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"{path}: cannot read as a video file ({e})") from e


def frame_times(start: float, seconds: float, num_frames: int, sampling: str = "uniform",
                fps: float = 25.0) -> np.ndarray:
    """Times (s) of the F frames of a window [start, start + seconds) on the `fps` grid (Sec. 4.2).

    "uniform": stride seconds*fps/F frames from the window's first grid frame (AudioSet, VGGSound);
    "consecutive": stride 1, the F frames centred in the window (EPIC-Kitchens).
    """
    if sampling == "uniform":
        offsets = np.floor(np.arange(num_frames) * (seconds * fps / num_frames) + 1e-6)
    elif sampling == "consecutive":
        offsets = np.arange(num_frames) + math.floor((seconds * fps - num_frames) / 2)
    else:
        raise ValueError(f"sampling must be 'uniform' or 'consecutive', got {sampling!r}")
    return (math.ceil(start * fps - 1e-6) + offsets) / fps


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize an (H, W, C) image so that its shorter side is `short_side` pixels, keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))  # cv2 wants (w, h)
    # Area averaging when shrinking avoids aliasing; bilinear when enlarging (as tf.image.resize).
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The central size x size crop of (F, H, W, C) frames (evaluation, Sec. 4.2)."""
    h, w = frames.shape[1:3]
    if h < size or w < size:
        raise ValueError(f"frames of {h}x{w} are smaller than the {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top:top + size, left:left + size]


def to_signed_unit(frames: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] (or float [0, 1]) frames as float32 in [-1, 1] (the official zero-centring)."""
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 127.5 - 1.0
    return (frames.astype(np.float32) * 2.0 - 1.0).clip(-1.0, 1.0)


class _Rescan(Exception):
    """The fast scan missed a frame (seek overshoot, or a VFR gap beyond the look-ahead)."""


@dataclasses.dataclass
class _Held:
    """The decoded frame on screen since `t`: raw BGR if colour-converted, RGB once resized."""

    t: float
    bgr: np.ndarray | None
    rgb: np.ndarray | None = None


def _open(path: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise VideoDecodeError(f"{path}: OpenCV cannot open the video stream")
    return cap


def _take(held: _Held, short_side: int) -> np.ndarray:
    """The held frame resized (once) to RGB; a frame that was never colour-converted forces a rescan."""
    if held.bgr is None:
        raise _Rescan()
    if held.rgb is None:
        held.rgb = np.ascontiguousarray(resize_short_side(held.bgr, short_side)[..., ::-1])
    return held.rgb


def _scan(info: MediaInfo, times: np.ndarray, short_side: int, seek: bool, gap: float) -> list[np.ndarray]:
    """One decoding pass: the sample-and-hold frame for each of the sorted `times`."""
    cap = _open(info.path)
    offset = info.video_start  # OpenCV reports timestamps relative to the video stream's first frame
    period = 1.0 / info.fps if info.fps > 0 else 0.04
    gap = max(gap, period)
    try:
        if seek:
            cap.set(cv2.CAP_PROP_POS_MSEC, max(0.0, times[0] - offset - SEEK_MARGIN_S) * 1000.0)
        out, held, k = [], None, 0
        while k < len(times) and cap.grab():
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 + offset
            if held is None and times[0] < t - _TIME_TOL_S:
                if seek:
                    raise _Rescan()  # the seek landed after the first frame needed
                held = _Held(t, cap.retrieve()[1])  # the first frame also stands for times before it
            elif held is not None:
                gap = max(gap, t - held.t)
            while k < len(times) and times[k] < t - _TIME_TOL_S:  # held was on screen at times[k]
                out.append(_take(held, short_side))
                k += 1
            # Colour-convert only frames that may be on screen at a time still needed (a VFR gap
            # longer than any seen before can defeat this guess; `_take` then asks for a full rescan).
            keep = k < len(times) and t > times[k] - 1.5 * gap
            held = _Held(t, cap.retrieve()[1] if keep else None)
            if keep and held.bgr is None:
                raise VideoDecodeError(f"{info.path}: the frame at {t:.3f} s could not be decoded")
        if k < len(times):
            if held is None:
                raise VideoDecodeError(f"{info.path}: no decodable video frame (corrupt file?)")
            # Past the last frame, it holds; but frames stopping well before the declared end mean lost data.
            last = held.t
            if min(times[-1], info.video_end) - last > max(0.5, 3.0 * period):
                raise VideoDecodeError(
                    f"{info.path}: video frames stop at {last:.3f} s but the file declares "
                    f"{info.video_end:.3f} s and {times[-1]:.3f} s is needed (truncated or corrupt file)")
            out += [_take(held, short_side)] * (len(times) - k)
        return out
    finally:
        cap.release()


def read_frames(info: MediaInfo, times: np.ndarray, short_side: int) -> np.ndarray:
    """Frames on screen at `times` (s, clip timeline), short side resized: uint8 RGB (N, h, w, 3)."""
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or not len(times):
        raise ValueError(f"times must be a non-empty 1-D array, got shape {times.shape}")
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    seek = bool(ordered[0] - info.video_start > SEEK_AFTER_S)
    try:
        try:
            frames = _scan(info, ordered, short_side, seek=seek, gap=0.0)
        except _Rescan:  # rare: decode from the start, colour-converting every frame
            frames = _scan(info, ordered, short_side, seek=False, gap=math.inf)
    except cv2.error as e:
        raise VideoDecodeError(f"{info.path}: OpenCV failed to decode ({e})") from e
    result = np.empty((len(times),) + frames[0].shape, np.uint8)
    result[order] = np.stack(frames)
    return result
