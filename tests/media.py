"""Small test videos written with PyAV: frames whose colour encodes their index, tones, odd containers.

Shared by the tokenisation tests and any other test that needs a real video file on disk.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

# Each colour channel carries one base-8 digit of the frame index, at levels 16, 48, ..., 240: a step of
# 32 survives YUV 4:2:0 conversion and lossy coding of a flat frame with a wide margin.
_STEP = 32


def index_colour(i: int) -> tuple[int, int, int]:
    """RGB colour that encodes frame index `i` (0 <= i < 512)."""
    if not 0 <= i < 512:
        raise ValueError(f"index {i} does not fit three base-8 digits")
    return tuple(_STEP * ((i >> s) & 7) + _STEP // 2 for s in (0, 3, 6))


def decode_index(rgb: np.ndarray) -> int:
    """Frame index encoded in an RGB image (uint8 or [-1, 1] floats), read from its mean colour."""
    rgb = np.asarray(rgb)
    rgb = (rgb + 1.0) * 127.5 if rgb.dtype.kind == "f" else rgb.astype(np.float64)
    digits = np.clip(np.round((rgb.reshape(-1, 3).mean(0) - _STEP // 2) / _STEP), 0, 7).astype(int)
    return int(digits[0] + 8 * digits[1] + 64 * digits[2])


def index_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """`n` flat frames, uint8 (n, height, width, 3), frame i coloured `index_colour(i)`."""
    colours = np.array([index_colour(i) for i in range(n)], np.uint8)
    return np.broadcast_to(colours[:, None, None, :], (n, height, width, 3)).copy()


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    """A sine of `freq` Hz, float32 (channels, samples), the same in every channel."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.tile((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), (channels, 1))


def write_video(path: str | Path, frames: np.ndarray | None, fps: float = 25.0, *,
                times: Sequence[float] | None = None, codec: str = "libx264",
                audio: np.ndarray | None = None, rate: int = 16000, layout: str | None = None,
                audio_start: float = 0.0, audio_codec: str = "aac", container: str = "mp4",
                faststart: bool = False) -> Path:
    """Write a video of H.264/MPEG-4 `frames` (uint8 RGB) at `fps` or at explicit `times` (VFR), plus audio.

    `audio` is float32 (channels, samples) at `rate` (AAC, or e.g. "pcm_s16le" in "matroska");
    `frames=None` writes an audio-only file.
    """
    path = Path(path)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, options=options) as out:
        video = audio_stream = None
        if frames is not None:
            video = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
            if times is not None:  # millisecond clock for variable-rate timestamps
                video.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, np.float32))
            layout = layout or {1: "mono", 2: "stereo", 6: "5.1"}[audio.shape[0]]
            audio_stream = out.add_stream(audio_codec, rate=rate, layout=layout)
        if video is not None:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                if times is not None:
                    frame.pts, frame.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
        if audio_stream is not None:
            offset = int(round(audio_start * rate))
            for s in range(0, audio.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, s:s + 1024]),
                                                   format="fltp", layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = rate, offset + s, Fraction(1, rate)
                out.mux(audio_stream.encode(frame))
            out.mux(audio_stream.encode(None))
    return path
