"""RolloutStepper: step through a clip's frames and layers with the attention-rollout map blended on each frame.

Inputs are plain arrays, so the widget needs no model: `frames` (F, H, W, 3) uint8 and `rollout_per_layer`
(L, T, h, w) or (L, h, w) non-negative maps, entry l being the rollout through layers 0..l of the readout
(CLS) row over the RGB patch grid (`rollout.mbt_rollout(..)["cls_to_patches"]["rgb"]` reshaped to the grid).
T is the grid's time axis (F / tubelet), so frame f shows map f * T // F. Each map is scaled to its own
maximum before it is coloured, so a frame shows where that layer's attention sits, not how much there is.
"""
from __future__ import annotations

import cv2
import ipywidgets as widgets
import numpy as np

from mbt_core.rollout import tightness


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or grey (H, W) uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"image must be uint8 (H, W[, 3]), got {image.dtype} {image.shape}")
    ok, data = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    if not ok:
        raise ValueError(f"cv2 could not encode an image of shape {image.shape} as PNG")
    return data.tobytes()


def blend_heatmap(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.5,
                  colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The RGB frame with `heat` (h, w) scaled to [0, 1] by its maximum, coloured and blended with weight alpha."""
    frame = np.asarray(frame)
    heat = np.asarray(heat, dtype=np.float64)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    if heat.ndim != 2 or not np.all(np.isfinite(heat)) or np.any(heat < 0):
        raise ValueError(f"heat must be a finite non-negative (h, w) map, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    peak = heat.max()
    scaled = np.zeros_like(heat) if peak <= 0 else heat / peak
    grey = np.round(255 * scaled).astype(np.uint8)
    # Nearest-neighbour keeps one flat colour per patch: the token grid the model saw.
    grey = cv2.resize(grey, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
    coloured = cv2.applyColorMap(grey, colormap)[..., ::-1]
    return cv2.addWeighted(coloured, alpha, frame, 1.0 - alpha, 0.0)


def check_clip(frames: np.ndarray, rollout_per_layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames as (F, H, W, 3) uint8 and maps as (L, T, h, w) float with T dividing F; clear errors otherwise."""
    frames = np.asarray(frames)
    maps = np.asarray(rollout_per_layer, dtype=np.float64)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[0] == 0:
        raise ValueError(f"rollout_per_layer must be (L, T, h, w) or (L, h, w) with L >= 1, got {maps.shape}")
    if len(frames) % maps.shape[1]:
        raise ValueError(f"rollout_per_layer has {maps.shape[1]} time steps, which do not divide the "
                         f"{len(frames)} frames")
    if not np.all(np.isfinite(maps)) or np.any(maps < 0):
        raise ValueError("rollout_per_layer must be finite and >= 0")
    return frames, maps


def stepper_view(frames: np.ndarray, maps: np.ndarray, frame: int, layer: int, alpha: float = 0.5) -> dict:
    """The blended image and its caption numbers for one (frame, layer) of a checked clip."""
    heat = maps[layer, frame * maps.shape[1] // len(frames)]
    spread = tightness(heat) if heat.sum() > 0 else None
    return {"image": blend_heatmap(frames[frame], heat, alpha), "heat": heat,
            "area": None if spread is None else spread["area"]}


class RolloutStepper(widgets.VBox):
    """Frame and layer sliders over one clip; shows the frame with the rollout through that layer."""

    def __init__(self, frames: np.ndarray, rollout_per_layer: np.ndarray, alpha: float = 0.5, title: str = "",
                 width: int = 320):
        self.frames, self.maps = check_clip(frames, rollout_per_layer)
        self.alpha = alpha
        layers = self.maps.shape[0]
        self.frame_slider = widgets.IntSlider(value=0, min=0, max=len(self.frames) - 1, description="frame")
        self.layer_slider = widgets.IntSlider(value=layers - 1, min=0, max=layers - 1, description="layer")
        self.play = widgets.Play(value=0, min=0, max=len(self.frames) - 1, interval=300, description="play frames")
        widgets.jslink((self.play, "value"), (self.frame_slider, "value"))
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"{width}px"))
        self.caption = widgets.HTML()
        header = [widgets.HTML(f"<b>{title}</b>")] if title else []
        super().__init__([*header, widgets.HBox([self.play, self.frame_slider]), self.layer_slider, self.image,
                          self.caption])
        self.frame_slider.observe(self._redraw, names="value")
        self.layer_slider.observe(self._redraw, names="value")
        self._redraw()

    def _redraw(self, change: dict | None = None) -> None:
        """Blend the current frame with the current layer's map."""
        frame, layer = self.frame_slider.value, self.layer_slider.value
        view = stepper_view(self.frames, self.maps, frame, layer, self.alpha)
        self.image.value = encode_png(view["image"])
        spread = "the map is empty" if view["area"] is None else (
            f"half the rollout mass lies on {100 * view['area']:.0f}% of the patches")
        self.caption.value = (f"frame {frame + 1} of {len(self.frames)}, rollout through layer {layer + 1} of "
                              f"{self.maps.shape[0]}: {spread}")
