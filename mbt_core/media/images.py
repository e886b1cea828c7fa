"""Frames and spectrograms as pictures: RGB uint8 images for patch grids, overlays, widgets and files.

Model inputs hold frames as float32 in [-1, 1] (`video.to_signed_unit`); `to_uint8` is its inverse, the one
conversion back that the token cache, the patch drawings and the overlays share. Spectrograms are drawn
grey, time across and low mel bins at the bottom.
"""
from __future__ import annotations

import base64

import cv2
import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames as uint8: float in [-1, 1] (model inputs) rounded to the nearest level and clipped; uint8 kept."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.rint((frames.astype(np.float32) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def spectrogram_image(spectrogram: np.ndarray) -> np.ndarray:
    """A (time, mel[, 1]) log-mel as a grey RGB uint8 image scaled to its own range: time across, low mel at the bottom."""
    spec = np.asarray(spectrogram, np.float32)
    spec = (spec[..., 0] if spec.ndim == 3 else spec).T[::-1]
    lo, hi = float(spec.min()), float(spec.max())
    grey = np.rint(255 * (spec - lo) / (hi - lo if hi > lo else 1.0)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor, so patch edges stay one crisp line per pixel."""
    return cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_NEAREST)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or grey (H, W) uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"image must be uint8 (H, W[, 3]), got {image.dtype} {image.shape}")
    ok, data = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    if not ok:
        raise ValueError(f"cv2 could not encode an image of shape {image.shape} as PNG")
    return data.tobytes()


def png_data_uri(png: bytes) -> str:
    """A `data:` URI of PNG bytes, for pictures embedded in self-contained pages."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def tile(images: np.ndarray, per_row: int = 8, gap: int = 4) -> np.ndarray:
    """(N, H, W, 3) uint8 images in rows of `per_row`, white between them."""
    n, h, w, _ = np.shape(images)
    rows = -(-n // per_row)
    canvas = np.full((rows * (h + gap) - gap, min(n, per_row) * (w + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, per_row)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return canvas
