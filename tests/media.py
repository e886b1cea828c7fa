"""Small test videos written with PyAV: frames whose colour encodes their index, tones, odd containers.

Shared by the tokenisation tests and any other test that needs a real video file on disk.
"""
from __future__ import annotations

import numpy as np

from mbt_core.media.video_writer import write_video

__all__ = ["index_colour", "decode_index", "index_frames", "tone", "write_video"]

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
