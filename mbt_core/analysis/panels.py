"""Labelled pictures from RGB uint8 images (OpenCV text): captions, tick-labelled axes, rows and columns of panels.

The overlays and the widgets compose their figures from these, so every picture a person sees names what it
shows: a caption above each panel, time and frequency on a spectrogram's axes.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (255, 255, 255)


def caption(lines: Sequence[str], width: int, line_height: int = 20) -> np.ndarray:
    """A white strip with black text lines, each shrunk to fit the width."""
    strip = np.full((line_height * len(lines) + 6, width, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        scale = 0.45
        text_width = cv2.getTextSize(text, FONT, scale, 1)[0][0]
        if text_width > width - 8:
            scale *= (width - 8) / text_width
        cv2.putText(strip, text, (4, line_height * (i + 1) - 4), FONT, scale, BLACK, 1, cv2.LINE_AA)
    return strip


def captioned(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """The image with a caption strip above it."""
    return np.concatenate([caption(lines, image.shape[1]), image])


def row(images: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Images side by side, top-aligned, on white, `gap` pixels apart."""
    height = max(im.shape[0] for im in images)
    padded = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0)), constant_values=255) for im in images]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    return np.concatenate([p for im in padded for p in (spacer, im)][1:], axis=1)


def column(images: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Images one above the other, left-aligned, on white, `gap` pixels apart."""
    width = max(im.shape[1] for im in images)
    padded = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in images]
    spacer = np.full((gap, width, 3), 255, np.uint8)
    return np.concatenate([p for im in padded for p in (spacer, im)][1:], axis=0)


def patch_grid_lines(image: np.ndarray, grid: tuple[int, int], colour: tuple[int, int, int] = GRID) -> np.ndarray:
    """A copy of the image with one-pixel lines on the borders of an (h, w) patch grid."""
    out = np.array(image, np.uint8, copy=True)
    height, width = out.shape[:2]
    for i in range(1, grid[0]):
        out[round(i * height / grid[0]), :] = colour
    for j in range(1, grid[1]):
        out[:, round(j * width / grid[1])] = colour
    return out


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values inside [low, high] (1, 2 or 5 times a power of ten apart)."""
    raw = (high - low) / count if high > low else max(abs(high), 1.0)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first = math.ceil(low / step - 1e-9)
    return [round(step * k, 10) for k in range(first, math.floor(high / step + 1e-9) + 1)]


def with_axes(image: np.ndarray, x_ticks: Sequence[tuple[float, str]], y_ticks: Sequence[tuple[float, str]],
              x_label: str, y_label: str, left: int = 92, bottom: int = 40) -> np.ndarray:
    """The image with a labelled x axis below and y axis on its left; ticks are (pixel position, text)."""
    height, width = image.shape[:2]
    out = np.full((height + bottom, width + left, 3), 255, np.uint8)
    out[:height, left:] = image
    for x, text in x_ticks:
        px = left + int(round(x))
        cv2.line(out, (px, height + 1), (px, height + 5), BLACK, 1)
        size = cv2.getTextSize(text, FONT, 0.4, 1)[0]
        cv2.putText(out, text, (min(max(px - size[0] // 2, left), out.shape[1] - size[0]), height + 17), FONT, 0.4,
                    BLACK, 1, cv2.LINE_AA)
    size = cv2.getTextSize(x_label, FONT, 0.45, 1)[0]
    cv2.putText(out, x_label, (left + (width - size[0]) // 2, height + 34), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    for y, text in y_ticks:
        py = int(round(y))
        cv2.line(out, (left - 5, py), (left - 1, py), BLACK, 1)
        size = cv2.getTextSize(text, FONT, 0.38, 1)[0]
        cv2.putText(out, text, (left - 6 - size[0], min(max(py + size[1] // 2, size[1]), height)), FONT, 0.38,
                    BLACK, 1, cv2.LINE_AA)
    label = np.full((18, height, 3), 255, np.uint8)
    text_width = cv2.getTextSize(y_label, FONT, 0.45, 1)[0][0]
    scale = 0.45 * min(1.0, (height - 4) / text_width)
    text_width = cv2.getTextSize(y_label, FONT, scale, 1)[0][0]
    cv2.putText(label, y_label, ((height - text_width) // 2, 13), FONT, scale, BLACK, 1, cv2.LINE_AA)
    out[:height, :18] = np.rot90(label)  # reads bottom to top
    return out
