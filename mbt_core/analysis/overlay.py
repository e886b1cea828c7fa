"""Attention-rollout overlays on frames and spectrograms (the paper's Fig. 6), exported as PNG and MP4 with OpenCV.

`clip_rollout` runs the model on one clip with `capture_attention=True`, rolls the attention out with
`rollout.mbt_rollout` and lays each readout onto its modality's patch grid: video (t, h, w), spectrogram
(time, freq). Overlays upsample a grid map to pixels by nearest patch (each patch one flat block), colour it
(cv2.applyColorMap) and blend it over the frame or the spectrogram (time across, low mel at the bottom):
(1 - a) * picture + a * colours, so the picture shows through. Figures put the picture, the map and the
blend side by side at a display size where the objects are visible (whole-factor nearest enlargement),
spectrograms with time (s) and frequency (mel bin, Hz) axes. Images are RGB uint8 throughout; the BGR
order OpenCV wants is applied only when writing files.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from mbt_core.analysis.panels import captioned, column, nice_ticks, patch_grid_lines, row, with_axes
from mbt_core.analysis.rollout import mbt_rollout, tightness
from mbt_core.config import MBTConfig, is_spectrogram
from mbt_core.media.audio import FRAMES_PER_SECOND, mel_centres
from mbt_core.media.images import spectrogram_image, to_uint8
from mbt_core.model.model import MBT

COLORMAP = cv2.COLORMAP_JET
PANEL_WIDTH = 240  # display pixels of one panel: a 24-pixel synthetic frame is enlarged 10 times


@functools.lru_cache(maxsize=16)
def attention_forward(config: MBTConfig) -> Callable:
    """A jitted evaluation forward pass that captures attention (compiled once per config and input shape)."""
    return jax.jit(lambda params, inputs: MBT(config).apply({"params": params}, inputs, train=False,
                                                            capture_attention=True))


def clip_attention(config: MBTConfig, params: Any, example: Mapping[str, np.ndarray]) -> dict[str, list]:
    """`aux["attention"]` of one clip (batch 1) from one run of the model (`attention_forward`, jitted)."""
    mods = [m for m in config.modalities if m in example]
    if not mods:
        raise ValueError(f"example has {sorted(example)}: none of the model's modalities {config.modalities}")
    for m in mods:
        if np.asarray(example[m]).dtype == np.uint8:
            raise ValueError(f"example[{m!r}] is uint8: pass model inputs (e.g. CachedSplit.example), frames in [-1, 1]")
    inputs = {m: jnp.asarray(example[m], jnp.float32)[None] for m in mods}
    _, aux = attention_forward(config)(params, inputs)
    return {stream: [np.asarray(a) for a in layers] for stream, layers in aux["attention"].items()}


def clip_rollout(config: MBTConfig, params: Any, example: Mapping[str, np.ndarray], **rollout_kw) -> dict[str, Any]:
    """Rollout of one clip (Fig. 6): the model run once (`clip_attention`), then `rollout_on_grids`."""
    return rollout_on_grids(config, clip_attention(config, params, example), example, **rollout_kw)


def rollout_on_grids(config: MBTConfig, attention: Mapping[str, list], example: Mapping[str, np.ndarray],
                     **rollout_kw) -> dict[str, Any]:
    """One clip's `mbt_rollout` without the batch axis, plus its maps on each patch grid.

    Adds `maps[m]` (m's CLS over m's patches), `cross_maps[r][s]` (r's CLS over s's patches, s != r; exactly 0
    when nothing crosses), `fused_maps[s]` (the mean over all output CLS tokens, as the classifier averages
    them), `grids`, `patch_shapes`, `modalities` and `frame_rate` (frames per second of the clip's frames).
    """
    mods = [m for m in config.modalities if m in example]
    rolled = mbt_rollout(attention, config, **rollout_kw)
    own = {m: rolled["cls_to_patches"][m][0] for m in mods}
    grids = {}
    for m in mods:
        spatial = np.shape(example[m])[:2 if is_spectrogram(m) else 3]
        grids[m] = tuple(s // p for s, p in zip(spatial, config.patch_shape(m)))
        if math.prod(grids[m]) != own[m].size:
            raise ValueError(f"example[{m!r}]: grid {grids[m]} has {math.prod(grids[m])} patches, "
                             f"the rollout {own[m].size}")
    cross = rolled["cross_modal"][0]  # (M, patches of all modalities in order), own patches zeroed
    starts = dict(zip(mods, np.cumsum([0] + [own[m].size for m in mods])))
    on_grid = lambda row, s: row[starts[s]:starts[s] + own[s].size].reshape(grids[s])
    cross_maps = {r: {s: on_grid(cross[i], s) for s in mods if s != r} for i, r in enumerate(mods)}
    maps = {m: own[m].reshape(grids[m]) for m in mods}
    fused = {s: (maps[s] + sum(cross_maps[r][s] for r in mods if r != s)) / len(mods) for s in mods}
    return {"joint": rolled["joint"][0], "cls_to_patches": own, "cross_modal": cross, "tokens": rolled["tokens"],
            "maps": maps, "cross_maps": cross_maps, "fused_maps": fused, "grids": grids,
            "patch_shapes": {m: config.patch_shape(m) for m in mods}, "modalities": mods,
            "frame_rate": config.rgb_frames / config.spec_seconds}


def select_map(result: Mapping[str, Any], source: str, readout: str | None = None) -> np.ndarray:
    """The map over `source`'s patch grid read by `readout`'s CLS (None: all output CLS tokens, averaged)."""
    if source not in result["maps"]:
        raise ValueError(f"no modality {source!r} in this rollout; it has {result['modalities']}")
    if readout is None:
        return result["fused_maps"][source]
    if readout == source:
        return result["maps"][source]
    if readout not in result["cross_maps"]:
        raise ValueError(f"no modality {readout!r} to read out in this rollout; it has {result['modalities']}")
    return result["cross_maps"][readout][source]


def frame_maps(video_map: np.ndarray, tubelet: int) -> np.ndarray:
    """A (t, h, w) tubelet map as (t·tubelet, h, w) per-frame maps, each tubelet's weight split evenly over its frames."""
    video_map = np.asarray(video_map, np.float64)
    if video_map.ndim != 3 or tubelet < 1:
        raise ValueError(f"expected a (t, h, w) map and tubelet >= 1, got shape {video_map.shape}, tubelet {tubelet}")
    return np.repeat(video_map / tubelet, tubelet, axis=0)


def summed_map(video_map: np.ndarray, tubelet: int = 1) -> np.ndarray:
    """The (h, w) map summed over all frames of the clip (Fig. 6)."""
    return frame_maps(video_map, tubelet).sum(axis=0)


def upsample(grid_map: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_NEAREST) -> np.ndarray:
    """An (h, w) patch map resized to (height, width) pixels (float32): nearest patch by default, so each patch
    stays one flat block and the patch grid shows; pass cv2.INTER_LINEAR for a smooth map."""
    return cv2.resize(np.asarray(grid_map, np.float32), (int(size[1]), int(size[0])), interpolation=interpolation)


def heat_colours(heat: np.ndarray, colormap: int = COLORMAP, vmax: float | None = None) -> np.ndarray:
    """A non-negative (H, W) map scaled by `vmax` (default its max) to 0..255 and coloured: RGB uint8."""
    heat = np.asarray(heat, np.float32)
    top = float(heat.max()) if vmax is None else float(vmax)
    scaled = np.clip(heat / top, 0.0, 1.0) if top > 0 else np.zeros_like(heat)
    return cv2.cvtColor(cv2.applyColorMap(np.rint(scaled * 255).astype(np.uint8), colormap), cv2.COLOR_BGR2RGB)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, colormap: int = COLORMAP,
          vmax: float | None = None) -> np.ndarray:
    """(1 - alpha) * image + alpha * heat_colours(heat), rounded: an RGB (or grey) uint8 image under a coloured map."""
    image = np.asarray(image, np.uint8)
    image = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    if np.shape(heat) != image.shape[:2]:
        raise ValueError(f"heat map {np.shape(heat)} and image {image.shape[:2]} differ in size")
    return cv2.addWeighted(image, 1.0 - alpha, heat_colours(heat, colormap, vmax), alpha, 0.0)


def display_size(shape: tuple[int, int], width: int) -> tuple[int, int]:
    """(H, W) of a picture enlarged by the whole factor that brings its width nearest to `width` (at least 1)."""
    factor = max(1, round(width / shape[1]))
    return shape[0] * factor, shape[1] * factor


def frame_overlay(frame: np.ndarray, grid_map: np.ndarray, size: tuple[int, int] | None = None, alpha: float = 0.5,
                  colormap: int = COLORMAP, vmax: float | None = None) -> np.ndarray:
    """One frame (RGB, uint8 or float in [-1, 1]) with an (h, w) patch map blended over it, at `size` (H, W);
    frame and map are enlarged by nearest neighbour, so pixels and patches stay sharp."""
    frame = to_uint8(frame)
    size = tuple(size or frame.shape[:2])
    if size != frame.shape[:2]:
        frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return blend(frame, upsample(grid_map, size), alpha, colormap, vmax)


def frame_panels(frame: np.ndarray, grid_map: np.ndarray, width: int = PANEL_WIDTH, alpha: float = 0.5,
                 colormap: int = COLORMAP, vmax: float | None = None) -> dict[str, np.ndarray]:
    """The frame, the map on its patch grid and their blend, each enlarged towards `width` pixels (whole factor).

    Frame and map panels carry the patch grid's borders as thin white lines; the blend is exactly
    `blend(frame, upsample(map), alpha)` at the display size, so the frame's pixels show through it."""
    size = display_size(to_uint8(frame).shape[:2], width)
    big = cv2.resize(to_uint8(frame), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    heat = upsample(grid_map, size)
    grid = np.shape(grid_map)
    return {"frame": patch_grid_lines(big, grid), "map": patch_grid_lines(heat_colours(heat, colormap, vmax), grid),
            "blend": blend(big, heat, alpha, colormap, vmax)}


def frame_triptych(frame: np.ndarray, grid_map: np.ndarray, width: int = PANEL_WIDTH, alpha: float = 0.5,
                   colormap: int = COLORMAP, vmax: float | None = None) -> np.ndarray:
    """`frame_panels` side by side, each captioned: frame, rollout, blend at its opacity."""
    panels = frame_panels(frame, grid_map, width, alpha, colormap, vmax)
    names = ("frame (patch grid)", "rollout map", f"blend, map opacity {alpha:.0%}")
    return row([captioned(image, [name]) for image, name in zip(panels.values(), names)])


def frames_overlay(frames: np.ndarray, video_map: np.ndarray, tubelet: int, size: tuple[int, int] | None = None,
                   alpha: float = 0.5, colormap: int = COLORMAP) -> np.ndarray:
    """Every frame with its own map, (F, H, W, 3); one colour scale for the clip so frames compare."""
    per_frame = frame_maps(video_map, tubelet)
    if len(per_frame) != len(frames):
        raise ValueError(f"{len(frames)} frames, but the map covers {len(per_frame)} ({len(video_map)} x {tubelet})")
    vmax = float(per_frame.max())
    return np.stack([frame_overlay(f, m, size, alpha, colormap, vmax) for f, m in zip(frames, per_frame)])


def summed_overlay(frames: np.ndarray, video_map: np.ndarray, frame: int | None = None,
                   size: tuple[int, int] | None = None, alpha: float = 0.5, colormap: int = COLORMAP) -> np.ndarray:
    """The map summed over all frames (Fig. 6) blended over one frame (default: the middle one)."""
    index = len(frames) // 2 if frame is None else frame
    return frame_overlay(frames[index], summed_map(video_map), size, alpha, colormap)


def spectrogram_overlay(spectrogram: np.ndarray, spec_map: np.ndarray, size: tuple[int, int] | None = None,
                        alpha: float = 0.5, colormap: int = COLORMAP) -> np.ndarray:
    """A (time, freq) patch map blended over the spectrogram image (time across, low mel at the bottom)."""
    image = spectrogram_image(spectrogram)
    size = tuple(size or image.shape[:2])
    if size != image.shape[:2]:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return blend(image, upsample(np.asarray(spec_map).T[::-1], size), alpha, colormap)


def spectrogram_panels(spectrogram: np.ndarray, spec_map: np.ndarray, width: int = 3 * PANEL_WIDTH,
                       alpha: float = 0.5, colormap: int = COLORMAP) -> dict[str, np.ndarray]:
    """The spectrogram, the map on its patch grid and their blend, one above the other, with time (s) and
    frequency (mel bin, Hz) axes; whole-factor enlargement, at least 2 pixels per mel bin."""
    image = spectrogram_image(spectrogram)  # (mel, time)
    mel, time = image.shape[:2]
    kx, ky = max(1, round(width / time)), max(2, round(128 / mel))
    size = (mel * ky, time * kx)
    big = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    grid = np.asarray(spec_map).T[::-1]  # (freq, time), low frequencies at the bottom
    heat = upsample(grid, size)
    seconds = time / FRAMES_PER_SECOND
    x_ticks = [(t * FRAMES_PER_SECOND * kx, f"{t:g}") for t in nice_ticks(0, seconds)]
    hz = mel_centres(mel)
    y_ticks = [((mel - 1 - b + 0.5) * ky, f"{b} ({hz[b] / 1000:.1f}k)") for b in map(int, nice_ticks(0, mel - 1, 4))]
    axes = lambda picture: with_axes(picture, x_ticks, y_ticks, "time (s)", "mel bin (Hz)")
    return {"frame": axes(patch_grid_lines(big, grid.shape)),
            "map": axes(patch_grid_lines(heat_colours(heat, colormap), grid.shape)),
            "blend": axes(blend(big, heat, alpha, colormap))}


def spectrogram_triptych(spectrogram: np.ndarray, spec_map: np.ndarray, width: int = 3 * PANEL_WIDTH,
                         alpha: float = 0.5, colormap: int = COLORMAP) -> np.ndarray:
    """`spectrogram_panels` one above the other, each captioned."""
    panels = spectrogram_panels(spectrogram, spec_map, width, alpha, colormap)
    names = ("log-mel spectrogram (patch grid)", "rollout map", f"blend, map opacity {alpha:.0%}")
    return column([captioned(image, [name]) for image, name in zip(panels.values(), names)])


def side_by_side(example: Mapping[str, np.ndarray], results: Mapping[str, Mapping[str, Any]], source: str = "rgb",
                 readout: str | None = None, frame: int | None = None, panel_width: int = PANEL_WIDTH,
                 mass: float = 0.5, alpha: float = 0.5, colormap: int = COLORMAP) -> tuple[np.ndarray, dict[str, dict | None]]:
    """Models' maps for one clip (Fig. 6: vanilla fusion vs MBT), one captioned row per model with its `tightness`.

    `results` maps a label to a `clip_rollout` result. A video row shows `frame_triptych` of the map summed over
    frames on one frame (default the middle one); a spectrogram row `spectrogram_triptych`. The statistics (area
    holding `mass` of the map, entropy) are computed on the shown patch-grid map and returned per label; None
    where the map is zero.
    """
    if not results:
        raise ValueError("side_by_side needs at least one model's rollout")
    rows, stats = [], {}
    for label, result in results.items():
        grid_map = select_map(result, source, readout)
        shown = grid_map if is_spectrogram(source) else summed_map(grid_map)
        if is_spectrogram(source):
            body = spectrogram_triptych(example[source], shown, 3 * panel_width, alpha, colormap)
        else:
            frames = example[source]
            body = frame_triptych(frames[len(frames) // 2 if frame is None else frame], shown, panel_width, alpha,
                                  colormap)
        if float(shown.sum()) > 0:
            stats[label] = tightness(shown, mass)
            line = (f"{mass:.0%} of mass in {stats[label]['area']:.1%} of patches, "
                    f"entropy {stats[label]['entropy']:.2f} nats")
        else:
            stats[label], line = None, "no attention mass reaches these patches"
        rows.append(captioned(body, [str(label), line]))
    return column(rows, gap=16), stats


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB (or grey) uint8 image as PNG with cv2.imwrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image, np.uint8)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image):
        raise OSError(f"{path}: OpenCV could not write the PNG")
    return path


def write_mp4(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write (F, H, W, 3) RGB uint8 frames as MP4: OpenCV's 'mp4v', else PyAV's `video_writer.write_video`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"{path}: expected (frames, H, W, 3) RGB frames, got shape {frames.shape}")
    # 4:2:0 encoders want even sizes: repeat the last row / column where needed.
    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (frames.shape[2], frames.shape[1]))
    if writer.isOpened():
        for image in frames:
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        writer.release()
        if path.is_file() and path.stat().st_size > 0:
            return path
    try:
        from mbt_core.media.video_writer import write_video
    except ImportError:
        raise OSError(f"{path}: OpenCV cannot write 'mp4v' here and mbt_core.media.video_writer is unavailable") from None
    return write_video(path, frames, fps)


def export_clip(example: Mapping[str, np.ndarray], result: Mapping[str, Any], out_dir: str | Path,
                stem: str = "clip", readout: str | None = None, panel_width: int = PANEL_WIDTH,
                fps: float | None = None, alpha: float = 0.5) -> dict[str, Path]:
    """Write a clip's overlays: per video modality `<stem>_<m>_summed.png` (frame, map, blend of the map summed over
    frames) and `<stem>_<m>_frames.mp4` (the blend frame by frame), per spectrogram `<stem>_<m>.png`."""
    out, written = Path(out_dir), {}
    for m in result["modalities"]:
        grid_map = select_map(result, m, readout)
        if is_spectrogram(m):
            written[f"{m}_png"] = write_png(out / f"{stem}_{m}.png",
                                            spectrogram_triptych(example[m], grid_map, 3 * panel_width, alpha))
        elif np.shape(example[m])[-1] == 3:  # colour frames; other video modalities (flow) have no picture
            frames = example[m]
            written[f"{m}_summed_png"] = write_png(out / f"{stem}_{m}_summed.png", frame_triptych(
                frames[len(frames) // 2], summed_map(grid_map), panel_width, alpha))
            size = display_size(np.shape(frames)[1:3], panel_width)
            video = frames_overlay(frames, grid_map, result["patch_shapes"][m][0], size, alpha)
            written[f"{m}_mp4"] = write_mp4(out / f"{stem}_{m}_frames.mp4", video, fps or result["frame_rate"])
    return written
