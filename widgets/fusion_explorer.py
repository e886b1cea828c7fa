"""FusionExplorer: move L_f, B and the fusion strategy and watch the attention flow, the cost and the results change.

A thin ipywidgets view over tested pure functions: `explorer_state` computes every number (attention-flow
masks from `flow_mask`, analytic GFLOPs in both conventions from `flops`, mAP looked up in a sweep's
results.json); the widget only turns them into pictures. A redraw runs NumPy and the analytic counter,
never JAX. Pictures are PNG bytes (cv2) and inline SVG, so the widget needs no browser-side plotting
library and its saved state shows in exported notebooks.

Rollout overlays: `overlays` maps (fusion, fusion_layer, num_bottlenecks, clip) to a precomputed uint8
(H, W, 3) image, or is a callable with those four arguments returning one (or None); images are cached per
setting and clip. `sweep_overlays` precomputes them for a sweep's runs (`overlay.clip_rollout`, Fig. 6).
"""
from __future__ import annotations

import functools
import html
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
from tqdm.auto import tqdm

from mbt_core.analysis.flow_mask import LINK_KINDS, expand_groups, link_kinds, num_tokens, token_layout
from mbt_core.analysis.overlay import clip_rollout, summed_overlay
from mbt_core.config import FUSIONS, MBTConfig
from mbt_core.experiment import load_run_split
from mbt_core.model.flops import CONVENTIONS, flops_table, gflops
from mbt_core.run_dir import CONFIG, read_config, read_results
from widgets.rollout_stepper import clip_example, encode_png, png_at_width

POWERS_OF_TWO = tuple(2 ** k for k in range(11))  # B from 1 to 1024 on a log scale
NOT_IN_SWEEP = "not in the sweep"
OVERLAY_WIDTH = 320  # pixels; small frames are enlarged by a whole factor, so patches stay sharp
# RGB colour of each LINK_KINDS code: none, within modality, through fusion tokens, cross-modal.
KIND_COLOURS = np.array([(245, 245, 245), (66, 133, 244), (251, 140, 0), (211, 47, 47)], dtype=np.uint8)
CONVENTION_NAMES = {"efficient": "this implementation", "official": "official counting"}
OverlaySource = Callable[[str, int, int, Any], "np.ndarray | None"]


def sweep_config(results: Sequence[Mapping[str, Any]]) -> MBTConfig | None:
    """The model config of the first run whose config.json can be read, else None."""
    for row in results:
        if row.get("run_dir") and (Path(row["run_dir"]) / CONFIG).is_file():
            return read_config(row["run_dir"]).model
    return None


def find_run(results: Sequence[Mapping[str, Any]], config: MBTConfig) -> tuple[Mapping[str, Any] | None, str]:
    """The sweep row of a config's (fusion, L_f, B, L) and a note; where B changes nothing, any B matches."""
    setting = (config.fusion, config.fusion_layer, config.num_layers)
    same = [r for r in results if (r["fusion"], r["fusion_layer"], r["num_layers"]) == setting]
    for row in same:
        if row["num_bottlenecks"] == config.num_bottlenecks:
            return row, ""
    if same and not config.has_fusion_tokens:
        return same[0], f"B does not change this model; the sweep ran it with B = {same[0]['num_bottlenecks']}"
    depths = sorted({r["num_layers"] for r in results})
    if depths and config.num_layers not in depths:
        return None, f"{NOT_IN_SWEEP} (its models have L = {depths}, this config L = {config.num_layers})"
    return None, NOT_IN_SWEEP


def bottleneck_options(config: MBTConfig, results: Sequence[Mapping[str, Any]] = ()) -> list[int]:
    """Values of the B slider: powers of two 1..1024, the config's B and every B of the sweep."""
    values = set(POWERS_OF_TWO) | {config.num_bottlenecks} | {int(r["num_bottlenecks"]) for r in results}
    return sorted(v for v in values if v >= 1)


@functools.lru_cache(maxsize=256)
def _curves(config: MBTConfig) -> dict[str, dict[str, list[float]]]:
    """GFLOPs over L_f for every fusion, per convention (cached: the slider revisits settings)."""
    return {c: flops_table(config, c) for c in CONVENTIONS}


def explorer_state(config: MBTConfig, fusion: str, fusion_layer: int, num_bottlenecks: int,
                   results: Sequence[Mapping[str, Any]] | None = None, max_tokens: int = 512) -> dict[str, Any]:
    """Every number the explorer shows for one setting: masks, GFLOPs (both conventions), curve, mAP.

    `masks[part]` holds `LINK_KINDS` codes for the unfused layers (0..L_f-1) and the fused ones (L_f..L-1),
    None where that range is empty; per token (`mask_view` "tokens") up to `max_tokens` tokens, else one
    cell per token group (`mask_view` "groups"; exact, since the rule is constant on group pairs).
    """
    cfg = config.replace(fusion=fusion, fusion_layer=fusion_layer, num_bottlenecks=num_bottlenecks)
    layers = {"unfused": cfg.unfused_layers, "fused": cfg.fused_layers}
    per_token = num_tokens(cfg) <= max_tokens
    masks = {}
    for part, span in layers.items():
        kinds = link_kinds(cfg, span[0]) if span else None
        masks[part] = expand_groups(cfg, kinds) if per_token and kinds is not None else kinds
    curves = _curves(cfg.replace(fusion="bottleneck", fusion_layer=cfg.num_layers))  # the key: all but B fixed
    state = {
        "config": cfg,
        "layers": layers,
        "groups": token_layout(cfg),
        "num_tokens": num_tokens(cfg),
        "mask_view": "tokens" if per_token else "groups",
        "masks": masks,
        "gflops": {c: gflops(cfg, c) for c in CONVENTIONS},
        "gflops_curve": {c: list(curves[c][fusion]) for c in CONVENTIONS},
        "run": None, "run_note": "no sweep results given", "mAP": None, "mAP_by_kind": {},
    }
    if results is not None:
        run, note = find_run(results, cfg)
        state.update(run=run, run_note=note)
        if run is not None:
            state["mAP"] = run["mAP"]
            state["mAP_by_kind"] = {k[4:]: v for k, v in run.items() if k.startswith("mAP_")}
            recorded = run.get("gflops")
            # 0.1% ignores the classifier head (a sweep may size it to the data) and catches any other change.
            if recorded is not None and not math.isclose(recorded, state["gflops"]["efficient"], rel_tol=1e-3):
                state["run_note"] = (f"the sweep's model differs from this config: it recorded {recorded:.4g} "
                                     f"GFLOPs for this setting")
    return state


def sweep_overlays(results: str | Path | Sequence[Mapping[str, Any]], clips: Sequence[int], split: str = "test",
                   which: str = "latest", progress: bool = True) -> dict[tuple, np.ndarray]:
    """Fig. 6 overlays (RGB rollout summed over frames, on the middle frame) of `clips` for every run of a sweep."""
    rows = read_results(results) if isinstance(results, (str, Path)) else results
    images = {}
    for row in tqdm(rows, desc="rollout overlays", unit="run", disable=not progress):
        run, params, cached = load_run_split(row["run_dir"], split, which)
        config = run.model
        for clip in clips:
            example, _ = clip_example(cached, clip, f"{row['run_dir']} split {split!r}")
            maps = clip_rollout(config, params, example)["maps"]
            key = (row["fusion"], row["fusion_layer"], row["num_bottlenecks"], clip)
            images[key] = summed_overlay(example["rgb"], maps["rgb"])
    return images


def mask_picture(kinds: np.ndarray, groups: Sequence, per_token: bool, size: int = 256) -> np.ndarray:
    """An RGB picture of a `LINK_KINDS` code matrix, enlarged to about `size` pixels, group borders in grey."""
    n = kinds.shape[0]
    scale = max(1, size // n)
    image = np.repeat(np.repeat(KIND_COLOURS[kinds], scale, axis=0), scale, axis=1)
    borders = [g.start for g in groups[1:]] if per_token else range(1, n)
    if scale > 1:
        for b in borders:
            image[b * scale, :] = image[:, b * scale] = (160, 160, 160)
    return image


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    raw = (high - low) / count if high > low else max(abs(high), 1.0)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    return [step * k for k in range(math.floor(low / step), math.ceil(high / step) + 1)]


def gflops_chart_svg(curves: Mapping[str, Sequence[float]], fusion_layer: int, width: int = 380,
                     height: int = 230) -> str:
    """Inline SVG of GFLOPs against L_f (Fig. 3, right), one line per convention, the current L_f marked."""
    left, right, top, bottom = 56, 12, 28, 36
    xs = range(len(next(iter(curves.values()))))
    values = [v for c in curves.values() for v in c]
    ticks = _nice_ticks(min(values), max(values))
    y0, y1 = ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + 1
    px = lambda x: left + (width - left - right) * x / max(len(xs) - 1, 1)
    py = lambda y: height - bottom - (height - top - bottom) * (y - y0) / (y1 - y0)
    colours = {"efficient": "#1a73e8", "official": "#e8710a"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<line x1="{px(fusion_layer):.1f}" y1="{top}" x2="{px(fusion_layer):.1f}" y2="{height - bottom}" '
             f'stroke="#999" stroke-dasharray="4,3"/>']
    for t in ticks:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{height - bottom + 14}" text-anchor="middle">{x}</text>')
    for i, (name, ys) in enumerate(curves.items()):
        colour = colours.get(name, "#555")
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline class="curve" data-convention="{name}" points="{points}" fill="none" '
                     f'stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<circle class="current" cx="{px(fusion_layer):.1f}" cy="{py(ys[fusion_layer]):.1f}" r="4" '
                     f'fill="{colour}"/>')
        parts.append(f'<text x="{left + 8}" y="{top - 14 + 12 * i}" fill="{colour}">'
                     f'{html.escape(CONVENTION_NAMES.get(name, name))}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" text-anchor="middle">'
                 f'fusion layer L_f</text>'
                 f'<text x="12" y="{(top + height - bottom) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(top + height - bottom) / 2:.0f})">GFLOPs per clip</text></svg>')
    return "".join(parts)


def _legend_html(state: Mapping[str, Any]) -> str:
    """Colour key and token order of the mask pictures."""
    swatch = lambda i: (f'<span style="display:inline-block;width:10px;height:10px;background:rgb'
                        f'{tuple(int(c) for c in KIND_COLOURS[i])}"></span> {LINK_KINDS[i]}')
    order = " · ".join(f"{html.escape(g.name)} ({g.size})" for g in state["groups"])
    view = ("one cell per token group" if state["mask_view"] == "groups"
            else "one pixel block per token")
    return (f"<small>rows attend to columns; {' &nbsp;'.join(swatch(i) for i in range(1, len(LINK_KINDS)))}"
            f"<br>order: {order}; {view} ({state['num_tokens']} tokens)</small>")


def _layers_text(span: range) -> str:
    """Human 1-based layer range, e.g. 'layers 1-8'."""
    return f"layer {span[0] + 1}" if len(span) == 1 else f"layers {span[0] + 1}-{span[-1] + 1}"


def format_gflops(value: float) -> str:
    """GFLOPs with four significant digits."""
    return f"{value:.4g}"


class FusionExplorer(widgets.VBox):
    """Sliders for L_f, B and the fusion strategy over a config (and optionally a sweep's results)."""

    def __init__(self, config: MBTConfig | None = None, results: str | Path | Sequence[Mapping] | None = None,
                 overlays: Mapping[tuple, np.ndarray] | OverlaySource | None = None, clips: Sequence = (),
                 max_tokens: int = 512):
        self.results = read_results(results) if isinstance(results, (str, Path)) else results
        self.config = config or (self.results and sweep_config(self.results)) or MBTConfig.preset("paper-b16")
        self.max_tokens = max_tokens
        if isinstance(overlays, Mapping):
            clips = clips or list(dict.fromkeys(key[3] for key in overlays))
            table = overlays
            overlays = lambda fusion, lf, b, clip: table.get((fusion, lf, b, clip))
        self.overlay_source, self._overlay_cache = overlays, {}
        cfg = self.config
        self.fusion = widgets.ToggleButtons(options=list(FUSIONS), value=cfg.fusion, description="fusion")
        self.fusion_layer = widgets.IntSlider(value=cfg.fusion_layer, min=0, max=cfg.num_layers,
                                              description="L_f")
        self.num_bottlenecks = widgets.SelectionSlider(options=bottleneck_options(cfg, self.results or ()),
                                                       value=max(cfg.num_bottlenecks, 1), description="B")
        self.clip = widgets.Dropdown(options=list(clips), description="clip", disabled=not clips)
        self.mask_captions = {p: widgets.HTML() for p in ("unfused", "fused")}
        self.mask_images = {p: widgets.Image(format="png") for p in ("unfused", "fused")}
        self.mask_panels = {p: widgets.VBox([self.mask_captions[p], self.mask_images[p]]) for p in self.mask_images}
        self.legend = widgets.HTML()
        self.gflops_label = widgets.HTML()
        self.gflops_chart = widgets.HTML()
        self.map_label = widgets.HTML()
        self.overlay_image = widgets.Image(format="png", layout=widgets.Layout(width=f"{OVERLAY_WIDTH}px"))
        self.overlay_note = widgets.HTML()
        results_box = [self.map_label] if self.results is not None else []
        if self.results is not None or self.overlay_source is not None:
            results_box += [self.clip, self.overlay_note, self.overlay_image]
        super().__init__([
            widgets.HBox([self.fusion]), widgets.HBox([self.fusion_layer, self.num_bottlenecks]),
            widgets.HBox([widgets.VBox([widgets.HBox(list(self.mask_panels.values())), self.legend]),
                          widgets.VBox([self.gflops_label, self.gflops_chart])]),
            *results_box])
        for control in (self.fusion, self.fusion_layer, self.num_bottlenecks):
            control.observe(self._redraw, names="value")
        self.clip.observe(self._redraw_overlay, names="value")
        self._redraw()

    def _redraw(self, change: dict | None = None) -> None:
        """Recompute the state of the current setting and update every output."""
        s = self.state = explorer_state(self.config, self.fusion.value, self.fusion_layer.value,
                                        self.num_bottlenecks.value, self.results, self.max_tokens)
        self.num_bottlenecks.disabled = not s["config"].has_fusion_tokens  # B changes nothing
        for part, span in s["layers"].items():
            panel = self.mask_panels[part]
            panel.layout.display = "flex" if span else "none"
            if span:
                kind = "unimodal" if part == "unfused" else f"fused ({self.fusion.value.replace('_', ' ')})"
                self.mask_captions[part].value = f"<b>{_layers_text(span)}</b>: {kind}"
                self.mask_images[part].value = encode_png(
                    mask_picture(s["masks"][part], s["groups"], s["mask_view"] == "tokens"))
        self.legend.value = _legend_html(s)
        self.gflops_label.value = "GFLOPs per clip: " + ", ".join(
            f"<b>{format_gflops(v)}</b> ({CONVENTION_NAMES[c]})" for c, v in s["gflops"].items())
        self.gflops_chart.value = gflops_chart_svg(s["gflops_curve"], self.fusion_layer.value)
        if self.results is not None:
            text = "mAP:"
            if s["mAP"] is not None:
                kinds = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in s["mAP_by_kind"].items())
                text += f" <b>{s['mAP']:.3f}</b>" + (f" ({kinds})" if kinds else "")
            self.map_label.value = text + (f" <i>{html.escape(s['run_note'])}</i>" if s["run_note"] else "")
        self._redraw_overlay()

    def overlay(self, clip: Any) -> np.ndarray | None:
        """The rollout overlay of `clip` for the current setting's run (cached), or None."""
        run = self.state["run"]
        if self.overlay_source is None or (self.results is not None and run is None):
            return None
        key = (run["fusion"], run["fusion_layer"], run["num_bottlenecks"], clip) if run else (
            self.fusion.value, self.fusion_layer.value, self.num_bottlenecks.value, clip)
        if key not in self._overlay_cache:
            self._overlay_cache[key] = self.overlay_source(*key)
        return self._overlay_cache[key]

    def _redraw_overlay(self, change: dict | None = None) -> None:
        """Show the chosen clip's overlay for the current setting, or say why there is none."""
        image = None if self.clip.value is None else self.overlay(self.clip.value)
        self.overlay_image.layout.display = "none" if image is None else "block"
        if image is not None:
            self.overlay_image.value = png_at_width(image, OVERLAY_WIDTH)
        self.overlay_note.value = (
            "" if image is not None else "<i>no rollout overlays given</i>" if self.overlay_source is None
            else "<i>no clips to show (pass clips=[...])</i>" if self.clip.value is None
            else f"<i>no overlay: {NOT_IN_SWEEP}</i>" if self.results is not None and self.state["run"] is None
            else f"<i>no overlay for clip {html.escape(str(self.clip.value))} in this run</i>")
