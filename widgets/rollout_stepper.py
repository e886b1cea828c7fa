"""RolloutStepper: step through a clip's frames and layers with the attention-rollout map blended on each frame.

Inputs are plain arrays, so the widget needs no model: `frames` (F, H, W, 3) uint8 (or float in [-1, 1], the
model's inputs) and `rollout_per_layer` (L, T, h, w) or (L, h, w) non-negative maps, entry l being the rollout
through layers 1..l+1 of the RGB readout (CLS) row over the patch grid (`layer_rollouts` computes them).
T is the grid's time axis: each tubelet's weight is split evenly over its F / T frames
(`overlay.frame_maps`); one colour scale per layer across the clip, so frames compare. The picture is
`overlay.frame_triptych` (frame | map | blend at the opacity slider's value). Sliders and caption count frames
and layers from 1, and the caption names the layer's kind (unimodal or fused). `RolloutStepper.from_run` runs
a trained model once on one clip of a run's split. Without a kernel (an exported page) the widget shows
`static_html`: the same pictures for every (frame, layer), stepped by two range inputs and a few lines of script.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Mapping, Sequence

import ipywidgets as widgets
import numpy as np

from mbt_core.analysis.overlay import PANEL_WIDTH, clip_attention, frame_maps, frame_triptych
from mbt_core.analysis.rollout import mbt_rollout, tightness
from mbt_core.config import MBTConfig
from mbt_core.data.cache import CachedSplit
from mbt_core.media.images import encode_png, enlarge, png_data_uri, to_uint8
from mbt_core.experiment import load_run_split
from widgets.stand_in import StandIn


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


def stepper_view(frames: np.ndarray, maps: np.ndarray, frame: int, layer: int, alpha: float = 0.5,
                 width: int = PANEL_WIDTH) -> dict:
    """Frame | map | blend of one (frame, layer) (0-based) of a checked clip and the share of patches holding half
    its mass."""
    heat = maps[layer, frame]
    image = frame_triptych(frames[frame], heat, width, alpha, vmax=float(maps[layer].max()))
    return {"image": image, "heat": heat, "area": tightness(heat)["area"] if heat.sum() > 0 else None}


def layer_kinds(config: MBTConfig) -> list[str]:
    """Each layer's kind for captions: 'unimodal' below L_f, 'fused (<fusion>)' from L_f on."""
    fused = f"fused ({config.fusion.replace('_', ' ')})"
    return [fused if config.is_fused(layer) else "unimodal" for layer in range(config.num_layers)]


def caption_text(frame: int, frames: int, layer: int, layers: int, kind: str, area: float | None) -> str:
    """The stepper's caption for 1-based frame and layer numbers, as the sliders show them."""
    spread = "the map is empty" if area is None else f"half the rollout mass lies on {100 * area:.0f}% of the patches"
    named = f" ({kind})" if kind else ""
    return f"frame {frame} of {frames}, rollout through layer {layer} of {layers}{named}: {spread}"


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


class RolloutStepper(StandIn, widgets.VBox):
    """Frame, layer and opacity sliders over one clip; shows frame | rollout map through that layer | blend."""

    def __init__(self, frames: np.ndarray, rollout_per_layer: np.ndarray, alpha: float = 0.5, title: str = "",
                 width: int = PANEL_WIDTH, layer_names: Sequence[str] | None = None):
        self.frames, self.maps = check_clip(frames, rollout_per_layer)
        self.width, self.title = width, title
        layers = self.maps.shape[0]
        self.layer_names = list(layer_names) if layer_names is not None else [""] * layers
        if len(self.layer_names) != layers:
            raise ValueError(f"{len(self.layer_names)} layer names for {layers} layers")
        self.frame_slider = widgets.IntSlider(value=1, min=1, max=len(self.frames), description="frame")
        self.layer_slider = widgets.IntSlider(value=layers, min=1, max=layers, description="layer")
        self.opacity = widgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="map opacity",
                                           readout_format=".0%", style={"description_width": "initial"})
        self.play = widgets.Play(value=1, min=1, max=len(self.frames), interval=300, description="play frames")
        widgets.jslink((self.play, "value"), (self.frame_slider, "value"))
        self.image = widgets.Image(format="png")
        self.caption = widgets.HTML()
        header = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []  # plain text
        super().__init__([*header, widgets.HBox([self.play, self.frame_slider]),
                          widgets.HBox([self.layer_slider, self.opacity]), self.image, self.caption])
        for control in (self.frame_slider, self.layer_slider, self.opacity):
            control.observe(self._redraw, names="value")
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
        kwargs.setdefault("layer_names", layer_kinds(config))
        return cls(example["rgb"], maps, **kwargs)

    def _redraw(self, change: dict | None = None) -> None:
        """Show the current frame and layer (sliders count from 1)."""
        frame, layer = self.frame_slider.value, self.layer_slider.value
        view = stepper_view(self.frames, self.maps, frame - 1, layer - 1, self.opacity.value, self.width)
        self.image.value = encode_png(view["image"])
        self.caption.value = html.escape(caption_text(frame, len(self.frames), layer, self.maps.shape[0],
                                                      self.layer_names[layer - 1], view["area"]))

    def static_html(self) -> str:
        """The stepper without a kernel: every (frame, layer) picture at the current opacity, two range inputs."""
        frames, layers = len(self.frames), self.maps.shape[0]
        pictures, captions = [], []
        for layer in range(layers):
            for frame in range(frames):
                view = stepper_view(self.frames, self.maps, frame, layer, self.opacity.value, self.width)
                pictures.append(png_data_uri(encode_png(view["image"])))
                captions.append(caption_text(frame + 1, frames, layer + 1, layers, self.layer_names[layer],
                                             view["area"]))
        uid = f"stepper{id(self):x}"
        first = (layers - 1) * frames
        return (f'<div id="{uid}">' + (f"<b>{html.escape(self.title)}</b><br>" if self.title else "")
                + f'<label>frame <input type="range" class="frame" min="1" max="{frames}" value="1"></label> '
                f'<label>layer <input type="range" class="layer" min="1" max="{layers}" value="{layers}"></label>'
                f'<br><img alt="frame, rollout map and blend" src="{pictures[first]}"><div class="caption">'
                f"{html.escape(captions[first])}</div></div><script>(function () {{"
                f"var root = document.getElementById('{uid}'), pictures = {json.dumps(pictures)}, "
                f"captions = {json.dumps(captions)}, frames = {frames};"
                "var frame = root.querySelector('.frame'), layer = root.querySelector('.layer');"
                "function show() { var i = (layer.value - 1) * frames + (frame.value - 1);"
                "root.querySelector('img').src = pictures[i]; root.querySelector('.caption').textContent = captions[i]; }"
                "frame.addEventListener('input', show); layer.addEventListener('input', show);"
                "})();</script>")

    def stand_in_html(self) -> str:
        """`static_html`: what a page without a kernel shows instead of the widget."""
        return self.static_html()
