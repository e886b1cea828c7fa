"""FusionExplorer: move L_f, B and the fusion strategy and watch the attention flow, the cost and the results change.

A thin ipywidgets view over tested pure functions: `explorer_state` computes every number (attention-flow
masks from `flow_mask`, analytic GFLOPs in both conventions from `flops`, mAP looked up in a sweep's
results.json); the widget only turns them into pictures. A redraw runs NumPy and the analytic counter,
never JAX. Pictures are PNG bytes (cv2) and inline SVG, so the widget needs no browser-side plotting
library and its saved state shows in exported notebooks.

Cost at both scales: beside the explorer's own model (the tiny one a sweep trained), the state holds the
GFLOPs of the paper's ViT-B/16 (preset `paper-b16`) for the same fusion, L_f and B, in both conventions.

Rollout overlays: `overlays` maps (fusion, fusion_layer, num_bottlenecks, clip) to an overlay entry
({"frame", "map"}: `explorer_runs`), shown as frame | map | blend at the opacity slider's value, or to a
ready uint8 (H, W, 3) image; or it is a callable with those four arguments returning one (or None), e.g.
`explorer_runs.sweep_overlay_source`. Entries are cached per setting and clip. Where the sweep lacks the
setting, a button trains it in place (`explorer_runs.train_setting`, progress shown) and the note names the
`mbt sweep` line that adds it.
"""
from __future__ import annotations

import functools
import html
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np

from mbt_core.analysis.flow_mask import LINK_KINDS, expand_groups, link_kinds, num_tokens, token_layout
from mbt_core.analysis.overlay import frame_triptych
from mbt_core.analysis.panels import nice_ticks
from mbt_core.config import FUSIONS, MBTConfig
from mbt_core.model.flops import CONVENTIONS, flops_table, gflops
from mbt_core.run_dir import CONFIG, read_config, read_results
from widgets.explorer_runs import add_command, train_setting
from widgets.stand_in import StandIn
from widgets.rollout_stepper import encode_png, png_at_width

POWERS_OF_TWO = tuple(2 ** k for k in range(11))  # B from 1 to 1024 on a log scale
SWEEP_BOTTLENECKS = (1, 4, 16)  # B offered beside a sweep: the paper's range (Fig. 4), each trained or trainable
NOT_IN_SWEEP = "not in the sweep"
OVERLAY_WIDTH = 320  # pixels; small frames are enlarged by a whole factor, so patches stay sharp
# RGB colour of each LINK_KINDS code: none, within modality, through fusion tokens, cross-modal.
KIND_COLOURS = np.array([(245, 245, 245), (66, 133, 244), (251, 140, 0), (211, 47, 47)], dtype=np.uint8)
CONVENTION_NAMES = {"efficient": "this implementation", "official": "official counting"}
REFERENCE = "paper-b16"  # the paper's ViT-B/16: the scale its cost argument is about
OverlaySource = Callable[[str, int, int, Any], "dict | np.ndarray | None"]


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
    late = [r for r in results if r["fusion_layer"] == r["num_layers"] == config.num_layers]
    if config.fusion_layer == config.num_layers and late:  # no fused layer: every strategy is the same model
        return late[0], (f"at L_f = L every fusion is late fusion; the sweep ran it as {late[0]['fusion']} "
                         f"with B = {late[0]['num_bottlenecks']}")
    depths = sorted({r["num_layers"] for r in results})
    if depths and config.num_layers not in depths:
        return None, f"{NOT_IN_SWEEP} (its models have L = {depths}, this config L = {config.num_layers})"
    return None, NOT_IN_SWEEP


def bottleneck_options(config: MBTConfig, results: Sequence[Mapping[str, Any]] = ()) -> list[int]:
    """Values of the B slider: with a sweep, 1, 4, 16 and every B its bottleneck runs have (a position without a
    run can be trained in place); without one, powers of two 1..1024; and the config's B."""
    swept = {int(r["num_bottlenecks"]) for r in results if r["fusion"] == "bottleneck"}
    values = (swept | set(SWEEP_BOTTLENECKS) if results else set(POWERS_OF_TWO)) | {config.num_bottlenecks}
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
        "reference": reference_cost(cfg),
        "b_note": b_note(cfg),
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


def reference_cost(config: MBTConfig, name: str = REFERENCE) -> dict[str, Any] | None:
    """GFLOPs (both conventions, and the curve over its own L_f) of preset `name` with the config's fusion, L_f and
    B; None when the config is that model. L_f past the preset's depth means late fusion there."""
    base = MBTConfig.preset(name)
    cfg = base.replace(fusion=config.fusion, fusion_layer=min(config.fusion_layer, base.num_layers),
                       num_bottlenecks=config.num_bottlenecks)
    if cfg == config.replace(num_classes=cfg.num_classes):
        return None
    curves = _curves(cfg.replace(fusion="bottleneck", fusion_layer=cfg.num_layers))
    return {"name": name, "config": cfg, "gflops": {c: gflops(cfg, c) for c in CONVENTIONS},
            "gflops_curve": {c: list(curves[c][cfg.fusion]) for c in CONVENTIONS}}


def b_note(config: MBTConfig) -> str:
    """Why B changes nothing in this setting ('' where it does)."""
    if config.has_fusion_tokens:
        return ""
    if config.fusion != "bottleneck":
        return (f"B is the number of bottleneck tokens: {config.fusion.replace('_', ' ')} fusion has none (its fused "
                f"layers exchange all tokens), so B changes nothing here")
    return f"at L_f = L = {config.num_layers} no layer is fused (late fusion): no bottleneck tokens, B changes nothing"


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


def _axis_ticks(low: float, high: float) -> list[float]:
    """Round tick values that enclose [low, high] (the lowest at or below low, the highest at or above high)."""
    ticks = nice_ticks(low, high, 4)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else max(abs(high), 1.0)
    return ([ticks[0] - step] if ticks[0] > low else []) + ticks + ([ticks[-1] + step] if ticks[-1] < high else [])


def gflops_chart_svg(curves: Mapping[str, Sequence[float]], fusion_layer: int, width: int = 380,
                     height: int = 230, title: str = "") -> str:
    """Inline SVG of GFLOPs against L_f (Fig. 3, right), one line per convention, the current L_f marked."""
    left, right, top, bottom = 56, 12, 28, 36
    xs = range(len(next(iter(curves.values()))))
    values = [v for c in curves.values() for v in c]
    ticks = _axis_ticks(min(values), max(values))
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
                 f'transform="rotate(-90 12 {(top + height - bottom) / 2:.0f})">GFLOPs per clip</text>'
                 f'<text x="{width - right}" y="12" text-anchor="end" font-weight="bold">{html.escape(title)}</text>'
                 '</svg>')
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


def _gflops_text(gflops_by_convention: Mapping[str, float]) -> str:
    """'<b>x</b> (this implementation), <b>y</b> (official counting)'."""
    return ", ".join(f"<b>{format_gflops(v)}</b> ({CONVENTION_NAMES[c]})" for c, v in gflops_by_convention.items())


def model_name(config: MBTConfig) -> str:
    """A short description of a model's size, e.g. 'L = 3, width 64, 24 px frames'."""
    return f"L = {config.num_layers}, width {config.hidden_size}, {config.image_size} px frames"


def overlay_picture(entry: Mapping[str, np.ndarray] | np.ndarray, alpha: float) -> np.ndarray:
    """What the explorer shows for an overlay entry: frame | map | blend at opacity `alpha`; a ready image as it is."""
    if isinstance(entry, Mapping):
        return frame_triptych(entry["frame"], entry["map"], alpha=alpha)
    return np.asarray(entry)


class FusionExplorer(StandIn, widgets.VBox):
    """Sliders for L_f, B and the fusion strategy over a config (and optionally a sweep's results)."""

    def __init__(self, config: MBTConfig | None = None, results: str | Path | Sequence[Mapping] | None = None,
                 overlays: Mapping[tuple, Any] | OverlaySource | None = None, clips: Sequence = (),
                 max_tokens: int = 512):
        self.sweep_dir = Path(results).parent if isinstance(results, (str, Path)) and Path(results).is_file() else (
            Path(results) if isinstance(results, (str, Path)) else None)
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
        self.b_note = widgets.HTML()
        self.clip = widgets.Dropdown(options=list(clips), description="clip", disabled=not clips)
        self.opacity = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="map opacity",
                                           readout_format=".0%", style={"description_width": "initial"})
        self.mask_captions = {p: widgets.HTML() for p in ("unfused", "fused")}
        self.mask_images = {p: widgets.Image(format="png") for p in ("unfused", "fused")}
        self.mask_panels = {p: widgets.VBox([self.mask_captions[p], self.mask_images[p]]) for p in self.mask_images}
        self.legend = widgets.HTML()
        self.gflops_label = widgets.HTML()
        self.gflops_chart = widgets.HTML()
        self.reference_chart = widgets.HTML()
        self.map_label = widgets.HTML()
        self.train_button = widgets.Button(description="train this setting", icon="play",
                                           layout=widgets.Layout(width="auto", display="none"))
        self.train_output = widgets.Output()
        self.overlay_image = widgets.Image(format="png")
        self.overlay_note = widgets.HTML()
        results_box = [self.map_label, self.train_button, self.train_output] if self.results is not None else []
        if self.results is not None or self.overlay_source is not None:
            results_box += [widgets.HBox([self.clip, self.opacity]), self.overlay_note, self.overlay_image]
        super().__init__([
            widgets.HBox([self.fusion]), widgets.HBox([self.fusion_layer, self.num_bottlenecks]), self.b_note,
            widgets.HBox([widgets.VBox([widgets.HBox(list(self.mask_panels.values())), self.legend]),
                          widgets.VBox([self.gflops_label, self.gflops_chart, self.reference_chart])]),
            *results_box])
        for control in (self.fusion, self.fusion_layer, self.num_bottlenecks):
            control.observe(self._redraw, names="value")
        self.clip.observe(self._redraw_overlay, names="value")
        self.opacity.observe(self._redraw_overlay, names="value")
        self.train_button.on_click(self.train_current)
        self._redraw()

    def stand_in_html(self) -> str:
        """What a page without a kernel shows instead of the live explorer: where its kernel-free twin is."""
        return ("<p><i>The live fusion explorer needs a running kernel: open this notebook in Jupyter. Without one, "
                "<code>widgets.static_export.explorer_view</code> shows the same explorer (plotly sliders over the "
                "sweep; in notebook 05, right below).</i></p>")

    def _redraw(self, change: dict | None = None) -> None:
        """Recompute the state of the current setting and update every output."""
        s = self.state = explorer_state(self.config, self.fusion.value, self.fusion_layer.value,
                                        self.num_bottlenecks.value, self.results, self.max_tokens)
        self.num_bottlenecks.disabled = not s["config"].has_fusion_tokens  # B changes nothing
        self.b_note.value = f"<i>{html.escape(s['b_note'])}</i>" if s["b_note"] else ""
        for part, span in s["layers"].items():
            self.mask_images[part].layout.display = "block" if span else "none"
            if span:
                kind = "unimodal" if part == "unfused" else f"fused ({self.fusion.value.replace('_', ' ')})"
                self.mask_captions[part].value = f"<b>{_layers_text(span)}</b>: {kind}"
                self.mask_images[part].value = encode_png(
                    mask_picture(s["masks"][part], s["groups"], s["mask_view"] == "tokens"))
            else:
                self.mask_captions[part].value = (
                    "<i>no layers below L_f = 0: every layer is fused</i>" if part == "unfused" else
                    f"<i>no fused layers: L_f = L = {s['config'].num_layers} is late fusion</i>")
        self.legend.value = _legend_html(s)
        lines = [f"GFLOPs per clip, this model ({model_name(s['config'])}): {_gflops_text(s['gflops'])}"]
        ref = s["reference"]
        if ref is not None:
            lines.append(f"paper ViT-B/16 ({ref['name']}, L = {ref['config'].num_layers}), same fusion, "
                         f"L_f = {ref['config'].fusion_layer}, B: {_gflops_text(ref['gflops'])}")
        self.gflops_label.value = "<br>".join(lines)
        self.gflops_chart.value = gflops_chart_svg(s["gflops_curve"], self.fusion_layer.value, title="this model")
        self.reference_chart.value = "" if ref is None else gflops_chart_svg(
            ref["gflops_curve"], ref["config"].fusion_layer, title=f"paper ViT-B/16 ({ref['name']})")
        if self.results is not None:
            text = "mAP:"
            if s["mAP"] is not None:
                kinds = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in s["mAP_by_kind"].items())
                text += f" <b>{s['mAP']:.3f}</b>" + (f" ({kinds})" if kinds else "")
            note = s["run_note"]
            if s["run"] is None and self.sweep_dir is not None and note == NOT_IN_SWEEP:
                cfg = s["config"]
                command = add_command(self.sweep_dir, self.results, (cfg.fusion, cfg.fusion_layer,
                                                                      cfg.num_bottlenecks))
                note += (f": press the button to train it here, or add it with <code>{html.escape(command)}</code> "
                         "(run in the folder holding the sweep)")
                self.map_label.value = text + f" <i>{note}</i>"
            else:
                self.map_label.value = text + (f" <i>{html.escape(note)}</i>" if note else "")
            trainable = s["run"] is None and self.sweep_dir is not None and s["run_note"] == NOT_IN_SWEEP
            self.train_button.layout.display = "flex" if trainable else "none"
        self._redraw_overlay()

    def train_current(self, button: Any = None) -> None:
        """Train and evaluate the current setting into the sweep (progress bars below the button), then redraw."""
        cfg = self.state["config"]
        self.train_button.disabled = True
        try:
            with self.train_output:
                self.results = train_setting(self.sweep_dir, cfg.fusion, cfg.fusion_layer, cfg.num_bottlenecks)
            self.results = read_results(self.sweep_dir)
        finally:
            self.train_button.disabled = False
        self._redraw()

    def overlay(self, clip: Any) -> Any:
        """The overlay entry (or image) of `clip` for the current setting's run (cached), or None."""
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
        entry = None if self.clip.value is None else self.overlay(self.clip.value)
        self.overlay_image.layout.display = "none" if entry is None else "block"
        self.opacity.disabled = not isinstance(entry, Mapping)
        if entry is not None:
            picture = overlay_picture(entry, self.opacity.value)
            self.overlay_image.value = (encode_png(picture) if isinstance(entry, Mapping)
                                        else png_at_width(picture, OVERLAY_WIDTH))
        self.overlay_note.value = (
            "<i>RGB rollout of the output CLS tokens, summed over frames, on the middle frame</i>"
            if entry is not None else "<i>no rollout overlays given</i>" if self.overlay_source is None
            else "<i>no clips to show (pass clips=[...])</i>" if self.clip.value is None
            else f"<i>no overlay: {NOT_IN_SWEEP}</i>" if self.results is not None and self.state["run"] is None
            else f"<i>no overlay for clip {html.escape(str(self.clip.value))} in this run</i>")
