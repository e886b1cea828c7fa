"""RolloutStepper: step through a clip's frames and layers with the attention-rollout map blended on each frame.

Inputs are plain arrays, so the widget needs no model: `frames` (F, H, W, 3) uint8 (or float in [-1, 1], the
model's inputs) and `rollout_per_layer` (L, T, h, w) or (L, h, w) non-negative maps, entry l being the rollout
through layers 1..l+1 of the RGB readout (CLS) row over the patch grid (`layer_rollouts` computes them).
T is the grid's time axis: each tubelet's weight is split evenly over its F / T frames
(`overlay.frame_maps`); one colour scale per layer across the clip, so frames compare. Blending is
`overlay.frame_overlay`. `RolloutStepper.from_run` runs a trained model once on one clip of a run's split.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping

import ipywidgets as widgets
import numpy as np

from mbt_core.analysis.overlay import clip_attention, frame_maps, frame_overlay
from mbt_core.analysis.rollout import mbt_rollout, tightness
from mbt_core.config import MBTConfig
from mbt_core.data.cache import CachedSplit
from mbt_core.media.images import encode_png, enlarge, to_uint8
from mbt_core.experiment import load_run_split


def png_at_width(image: np.ndarray, width: int) -> bytes:
    """PNG bytes of an image enlarged by a whole factor (nearest neighbour) towards `width` pixels."""
    image = np.asarray(image)
    return encode_png(enlarge(image, max(1, width // image.shape[1])))


def check_clip(frames: np.ndarray, rollout_per_layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames as (F, H, W, 3) uint8 and maps as (L, F, h, w) per-frame float maps; clear errors otherwise."""
    frames = np.asarray(frames)
    maps = np.asarray(rollout_per_layer, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (F, H, W, 3) with F >= 1, got shape {frames.shape}")
    if maps.ndim == 3:
        maps = maps[:, None]
    if maps.ndim != 4 or maps.shape[0] == 0:
        raise ValueError(f"rollout_per_layer must be (L, T, h, w) or (L, h, w) with L >= 1, got {maps.shape}")
    if len(frames) % maps.shape[1]:
        raise ValueError(f"rollout_per_layer has {maps.shape[1]} time steps, which do not divide the "
                         f"{len(frames)} frames")
    if not np.all(np.isfinite(maps)) or np.any(maps < 0):
        raise ValueError("rollout_per_layer must be finite and >= 0")
    tubelet = len(frames) // maps.shape[1]
    return to_uint8(frames), np.stack([frame_maps(m, tubelet) for m in maps])


def stepper_view(frames: np.ndarray, maps: np.ndarray, frame: int, layer: int, alpha: float = 0.5) -> dict:
    """The blended image of one (frame, layer) of a checked clip and the share of patches holding half its mass."""
    heat = maps[layer, frame]
    image = frame_overlay(frames[frame], heat, alpha=alpha, vmax=float(maps[layer].max()))
    return {"image": image, "heat": heat, "area": tightness(heat)["area"] if heat.sum() > 0 else None}


def layer_rollouts(attention: Mapping[str, list], config: MBTConfig, modality: str = "rgb",
                   **rollout_kw) -> np.ndarray:
    """(L, *grid) maps: for each depth l, the rollout through layers 1..l of `modality`'s CLS over its patches."""
    own = max((len(v) for k, v in attention.items() if k != "joint"), default=0)
    total = own + len(attention.get("joint", []))
    maps = []
    for depth in range(1, total + 1):
        head = {k: (v[:depth] if k != "joint" else v[:max(0, depth - own)]) for k, v in attention.items()}
        rolled = mbt_rollout(head, config, **rollout_kw)
        maps.append(rolled["cls_to_patches"][modality][0].reshape(config.grid(modality)))
    return np.stack(maps)


def clip_example(cached: CachedSplit, clip: int, where: str = "split") -> tuple[dict[str, np.ndarray], str]:
    """Evaluation inputs (view 0) and id of clip number `clip` of a tokenised split."""
    if not 0 <= clip < len(cached):
        raise IndexError(f"{where}: clip {clip} is outside the split, which holds {len(cached)} clips")
    return cached.example(clip), str(cached.clip_ids[clip]) if cached.clip_ids is not None else str(clip)


class RolloutStepper(widgets.VBox):
    """Frame and layer sliders over one clip; shows the frame with the rollout through that layer."""

    def __init__(self, frames: np.ndarray, rollout_per_layer: np.ndarray, alpha: float = 0.5, title: str = "",
                 width: int = 320):
        self.frames, self.maps = check_clip(frames, rollout_per_layer)
        self.alpha, self.width = alpha, width
        layers = self.maps.shape[0]
        self.frame_slider = widgets.IntSlider(value=0, min=0, max=len(self.frames) - 1, description="frame")
        self.layer_slider = widgets.IntSlider(value=layers - 1, min=0, max=layers - 1, description="layer")
        self.play = widgets.Play(value=0, min=0, max=len(self.frames) - 1, interval=300, description="play frames")
        widgets.jslink((self.play, "value"), (self.frame_slider, "value"))
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"{width}px"))
        self.caption = widgets.HTML()
        header = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []  # plain text
        super().__init__([*header, widgets.HBox([self.play, self.frame_slider]), self.layer_slider, self.image,
                          self.caption])
        self.frame_slider.observe(self._redraw, names="value")
        self.layer_slider.observe(self._redraw, names="value")
        self._redraw()

    @classmethod
    def from_run(cls, run_dir: str | Path, clip: int, split: str = "test", which: str = "latest",
                 **kwargs) -> "RolloutStepper":
        """The stepper of clip `clip` of a run's split: the model runs once, rollouts for every depth."""
        run, params, cached = load_run_split(run_dir, split, which)
        config = run.model
        example, clip_id = clip_example(cached, clip, f"{run_dir} split {split!r}")
        maps = layer_rollouts(clip_attention(config, params, example), config)
        kwargs.setdefault("title", f"{Path(run_dir).name}: {clip_id}")
        return cls(example["rgb"], maps, **kwargs)

    def _redraw(self, change: dict | None = None) -> None:
        """Blend the current frame with the current layer's map."""
        frame, layer = self.frame_slider.value, self.layer_slider.value
        view = stepper_view(self.frames, self.maps, frame, layer, self.alpha)
        self.image.value = png_at_width(view["image"], self.width)
        spread = "the map is empty" if view["area"] is None else (
            f"half the rollout mass lies on {100 * view['area']:.0f}% of the patches")
        self.caption.value = (f"frame {frame + 1} of {len(self.frames)}, rollout through layer {layer + 1} of "
                              f"{self.maps.shape[0]}: {spread}")
