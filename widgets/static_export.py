"""The FusionExplorer without a kernel: one self-contained HTML page whose sliders step over a precomputed grid.

`explorer_figure` precomputes, with the widget's own `explorer_state`, every (fusion, B, L_f) setting as a
plotly frame: the attention-flow mask summary (one cell per token group) of the unimodal and the fused
layers, GFLOPs against L_f in both conventions with the current L_f marked (Fig. 3, right) for the explorer's
model and for the paper's ViT-B/16 at the same fusion, L_f and B, mAP against L_f from the sweep, and the
setting's rollout overlay (frame | map | blend) for one clip. Axes are fixed over all frames (masks with
rows top to bottom, GFLOPs and mAP ranges covering every setting), and an empty panel says why it is empty
(no layers below L_f = 0, a setting not trained: with the `mbt sweep` line that adds it). Three
`layout.sliders` (fusion, B, L_f) pick the frame: their steps do nothing themselves (`method="skip"`); a
few lines of page script join the three values into the frame's name, call `Plotly.animate`, and hide the
B slider where B means nothing (the other fusions have one frame per L_f, at the config's B).
`explorer_html` writes the page and `explorer_view` is the same as a notebook output, plotly.js embedded:
it works offline, in executed notebooks' HTML, on nbviewer and on static pages, not where scripts are
stripped (GitHub's notebook view). `explorer_figure(...).show()` draws the figure without the page script:
there the sliders do nothing.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from IPython.display import HTML
from plotly.subplots import make_subplots

from mbt_core.analysis.flow_mask import LINK_KINDS, token_layout
from mbt_core.config import FUSIONS, MBTConfig
from mbt_core.media.images import encode_png, png_data_uri
from mbt_core.run_dir import read_results
from widgets.explorer_runs import add_command
from widgets.fusion_explorer import (CONVENTION_NAMES, KIND_COLOURS, NOT_IN_SWEEP, bottleneck_options,
                                     explorer_state, format_gflops, model_name, overlay_picture, reference_cost,
                                     sweep_config)

SLIDERS = ("fusion", "B", "L_f")
# Step colours for the LINK_KINDS codes 0..3 on a 0..3 colour axis.
_COLOURSCALE = [[edge, f"rgb{tuple(int(c) for c in KIND_COLOURS[k])}"]
                for k in range(len(LINK_KINDS)) for edge in (k / len(LINK_KINDS), (k + 1) / len(LINK_KINDS))]
# Page script: the three sliders' values name the frame to show.
_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var state = %s;
gd.on('plotly_sliderchange', function (e) {
  var name = (e.slider._input || e.slider).name;
  state[name] = String(e.step.value !== undefined ? e.step.value : e.step.label);
  var b = state.fusion === 'bottleneck' ? state.B : 'any';
  Plotly.animate(gd, [state.fusion + '|' + b + '|' + state.L_f],
                 {mode: 'immediate', frame: {duration: 0, redraw: true}, transition: {duration: 0}});
  if (name === 'fusion') {
    Plotly.relayout(gd, {'sliders[1].visible': state.fusion === 'bottleneck'});
  }
});
"""


def frame_name(fusion: str, num_bottlenecks: int, fusion_layer: int) -> str:
    """Name of the frame of one setting, as the page script builds it (B only matters to bottleneck fusion)."""
    return f"{fusion}|{num_bottlenecks if fusion == 'bottleneck' else 'any'}|{fusion_layer}"


def _title(state: Mapping[str, Any], fusion: str, b: int, lf: int) -> str:
    """Lines naming the setting, its GFLOPs at both scales and its mAP."""
    cfg, ref = state["config"], state["reference"]
    cost = lambda by: " / ".join(f"{format_gflops(v)} ({CONVENTION_NAMES[c]})" for c, v in by.items())
    score = "mAP " + (f"{state['mAP']:.3f}" if state["mAP"] is not None else "-")
    if state["mAP_by_kind"]:
        score += " (" + ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in state["mAP_by_kind"].items()) + ")"
    note = f" [{html.escape(state['run_note'])}]" if state["run_note"] else ""
    b_text = f", B = {b}" if fusion == "bottleneck" else f"</b><br><i>{html.escape(state['b_note'])}</i><b>"
    paper = f"<br>paper ViT-B/16 ({ref['name']}), same setting: {cost(ref['gflops'])}" if ref else ""
    return (f"<b>{fusion.replace('_', ' ')} fusion, L_f = {lf} of {cfg.num_layers}{b_text}</b><br>"
            f"GFLOPs per clip, this model ({model_name(cfg)}): {cost(state['gflops'])}{paper}<br>{score}{note}")


def _note(text: str, x: Any, y: Any) -> go.Scatter:
    """A text-only trace: why a panel is empty ('' when it is not)."""
    return go.Scatter(x=[x], y=[y], mode="text", text=[text], textfont=dict(size=12, color="#444"),
                      hoverinfo="skip", showlegend=False)


def _mask_traces(state: Mapping[str, Any], names: list[str]) -> list[Any]:
    """The unfused and fused group masks on the fixed group axes (absent groups blank), each with its note."""
    where = [names.index(g.name) for g in state["groups"]]
    sizes = {g.name: g.size for g in state["groups"]}
    traces, notes = [], []
    for part in ("unfused", "fused"):
        z = np.full((len(names), len(names)), np.nan)
        if state["masks"][part] is not None:
            z[np.ix_(where, where)] = state["masks"][part]
        text = [[f"{q} ({sizes.get(q, 0)} token{'' if sizes.get(q) == 1 else 's'}) attends to {k}: "
                 f"{LINK_KINDS[int(v)] if v == v else 'no such tokens here'}" for k, v in zip(names, row)]
                for q, row in zip(names, z)]
        traces.append(go.Heatmap(z=z.tolist(), x=names, y=names, text=text, hoverinfo="text", zmin=0,
                                 zmax=len(LINK_KINDS) - 1, colorscale=_COLOURSCALE, showscale=False,
                                 xgap=1, ygap=1))
        empty = state["masks"][part] is None
        why = ("no layers below L_f = 0:<br>every layer is fused" if part == "unfused"
               else f"no fused layers:<br>L_f = L = {state['config'].num_layers} is late fusion")
        notes.append(_note(why if empty else "", names[len(names) // 2], names[len(names) // 2]))
    return traces + notes


def _cost_traces(state: Mapping[str, Any], lf: int, prefix: str) -> list[go.Scatter]:
    """GFLOPs against L_f in both conventions and the current setting's mark (`prefix` names the model)."""
    xs = list(range(len(next(iter(state["gflops_curve"].values())))))
    curves = [go.Scatter(x=xs, y=state["gflops_curve"][c], mode="lines+markers", legendgroup=prefix,
                         name=f"{prefix}, {CONVENTION_NAMES[c]}") for c in state["gflops_curve"]]
    mark = go.Scatter(x=[lf] * len(state["gflops"]), y=list(state["gflops"].values()), mode="markers",
                      marker=dict(size=13, symbol="circle-open", color="black", line=dict(width=2)),
                      name="current L_f", showlegend=False)
    return [*curves, mark]



def _frame_traces(state: Mapping[str, Any], names: list[str], map_curve: list[float | None], lf: int,
                  picture: np.ndarray | None, missing: str, size: tuple[int, int], score_middle: float) -> list[Any]:
    """All traces of one setting, in a fixed order: masks and their notes, GFLOPs of this model and of the
    paper's, the mAP curve, mark and note, the overlay and its note."""
    xs = list(range(len(map_curve)))
    ref = state["reference"]
    score = go.Scatter(x=xs, y=map_curve, mode="lines+markers", name="mAP (sweep)", connectgaps=False)
    score_mark = go.Scatter(x=[lf] if state["mAP"] is not None else [], y=[state["mAP"]] if state["mAP"] is not None
                            else [], mode="markers", showlegend=False,
                            marker=dict(size=13, symbol="circle-open", color="black", line=dict(width=2)))
    score_note = _note("" if state["mAP"] is not None else missing.split("<br>")[0], (len(xs) - 1) / 2,
                       score_middle)
    image = np.full((*size, 3), 255, np.uint8) if picture is None else picture
    overlay = go.Image(source=png_data_uri(encode_png(image)), hoverinfo="skip")
    overlay_note = _note("" if picture is not None else missing, size[1] / 2, size[0] / 2)
    paper = _cost_traces(ref, ref["config"].fusion_layer, "paper ViT-B/16") if ref else []
    return [*_mask_traces(state, names), *_cost_traces(state, lf, "this model"), *paper,
            score, score_mark, score_note, overlay, overlay_note]


def _slider(name: str, values: Sequence, active: int, y: float) -> dict[str, Any]:
    """A slider whose steps only carry values (the page script acts on them)."""
    return dict(name=name, active=active, x=0.08, len=0.84, y=y, yanchor="top", pad=dict(t=10, b=0),
                currentvalue=dict(prefix=f"{name} = "),
                steps=[dict(label=str(v), value=str(v), method="skip", args=[]) for v in values])


def _span(values: Sequence[float], pad: float = 0.08) -> list[float]:
    """An axis range holding every value with a margin."""
    values = [v for v in values if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    margin = (high - low) * pad or abs(high) * pad or 1.0
    return [low - margin, high + margin]


def _missing_note(state: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] | None,
                  sweep_dir: Path | None) -> str:
    """Why a setting has no mAP and overlay, and (from a sweep directory) the command that adds it; lines
    joined by <br>."""
    if rows is None:
        return "no sweep results given"
    if state["run"] is not None:
        return "no overlays given (pass overlays=...)"
    cfg = state["config"]
    if sweep_dir is None or state["run_note"] != NOT_IN_SWEEP:
        return html.escape(state["run_note"])
    command = add_command(sweep_dir, rows, (cfg.fusion, cfg.fusion_layer, cfg.num_bottlenecks))
    return "<br>".join([f"{NOT_IN_SWEEP}: train it with the live explorer's button (notebook 05),",
                        "or run in the folder holding the sweep:",
                        *(html.escape(part) for part in command.replace(" --", "\n  --").splitlines())])


Overlays = Mapping[tuple, Any] | Callable[[str, int, int, Any], Any] | None


def explorer_figure(config: MBTConfig | None = None,
                    results: str | Path | Sequence[Mapping[str, Any]] | None = None,
                    overlays: Overlays = None, clip: Any = 0, alpha: float = 0.5) -> go.Figure:
    """The explorer as one plotly figure with a frame per (fusion, B, L_f) setting and three sliders; `overlays`
    (a mapping or function of (fusion, L_f, B, clip), as the widget takes) gives each trained setting's overlay."""
    sweep_dir = Path(results) if isinstance(results, (str, Path)) else None
    sweep_dir = sweep_dir.parent if sweep_dir is not None and sweep_dir.is_file() else sweep_dir
    rows = read_results(results) if isinstance(results, (str, Path)) else results
    config = config or (rows and sweep_config(rows)) or MBTConfig.preset("paper-b16")
    source = (lambda *key: overlays.get(key)) if isinstance(overlays, Mapping) else overlays
    layers = config.num_layers
    bottlenecks = bottleneck_options(config, rows or ())
    b0 = config.num_bottlenecks if config.num_bottlenecks in bottlenecks else bottlenecks[0]
    names = [g.name for g in token_layout(config.replace(fusion="bottleneck", fusion_layer=0, num_bottlenecks=b0))]
    fig = make_subplots(rows=4, cols=2, vertical_spacing=0.07, horizontal_spacing=0.14,
                        specs=[[{}, {}], [{}, {}], [{"colspan": 2}, None], [{"colspan": 2}, None]],
                        row_heights=[0.27, 0.22, 0.2, 0.31], subplot_titles=(
        "layers below L_f (unimodal)", "layers from L_f on (fused)", "GFLOPs per clip: this model",
        "GFLOPs per clip: paper ViT-B/16, same fusion, L_f, B", "mAP against L_f (sweep)",
        f"rollout overlay, clip {html.escape(str(clip))}: frame | map | blend"))
    settings = []  # (fusion, B, L_f, state, mAP curve, overlay picture)
    for fusion in FUSIONS:
        for b in (bottlenecks if fusion == "bottleneck" else [b0]):
            states = [explorer_state(config, fusion, lf, b, rows, max_tokens=0) for lf in range(layers + 1)]
            for lf, state in enumerate(states):
                run = state["run"]
                entry = (source(run["fusion"], run["fusion_layer"], run["num_bottlenecks"], clip)
                         if run is not None and source is not None else None)
                settings.append((fusion, b, lf, state, [s["mAP"] for s in states],
                                 None if entry is None else overlay_picture(entry, alpha)))
    pictures = [p for *_, p in settings if p is not None]
    size = tuple(np.max([p.shape[:2] for p in pictures], axis=0)) if pictures else (260, 736)
    score_range = _span([v for *_, curve, _ in settings for v in curve]) if rows else [0, 1]
    frames = [go.Frame(name=frame_name(fusion, b, lf), layout=go.Layout(title_text=_title(state, fusion, b, lf)),
                       data=_frame_traces(state, names, curve, lf, picture, _missing_note(state, rows, sweep_dir),
                                          size, sum(score_range) / 2))
              for fusion, b, lf, state, curve, picture in settings]
    costs = [v for *_, state, _, _ in settings for c in state["gflops_curve"].values() for v in c]
    ref_costs = [v for *_, state, _, _ in settings for c in (state["reference"] or {}).get("gflops_curve", {}).values()
                 for v in c]
    fig.frames = frames
    initial = next(f for f in frames if f.name == frame_name(config.fusion, b0, config.fusion_layer))
    has_ref = reference_cost(config) is not None
    cells = [(1, 1), (1, 2), (1, 1), (1, 2), (2, 1), (2, 1), (2, 1)]
    cells += [(2, 2)] * 3 if has_ref else []
    cells += [(3, 1)] * 3 + [(4, 1)] * 2
    for trace, (r, c) in zip(initial.data, cells):
        fig.add_trace(trace, row=r, col=c)
    for col in (1, 2):  # rows top to bottom, fixed: animation would otherwise reset an autorange
        fig.update_yaxes(range=[len(names) - 0.5, -0.5], autorange=False, categoryorder="array",
                         categoryarray=names, row=1, col=col)
        fig.update_xaxes(range=[-0.5, len(names) - 0.5], autorange=False, categoryorder="array",
                         categoryarray=names, row=1, col=col)
    fig.update_xaxes(title_text="L_f", dtick=1, range=[-0.3, layers + 0.3], row=2, col=1)
    fig.update_xaxes(title_text="L_f", dtick=1, row=3, col=1, range=[-0.3, layers + 0.3])
    fig.update_yaxes(title_text="GFLOPs", range=_span(costs), autorange=False, row=2, col=1)
    if has_ref:
        ref_layers = len(initial.data[7].x) - 1
        fig.update_xaxes(title_text="L_f", dtick=1, range=[-0.3, ref_layers + 0.3], row=2, col=2)
        fig.update_yaxes(title_text="GFLOPs", range=_span(ref_costs), autorange=False, row=2, col=2)
    fig.update_yaxes(title_text="mAP", range=score_range, autorange=False, row=3, col=1)
    fig.update_xaxes(visible=False, range=[0, size[1]], autorange=False, row=4, col=1)
    fig.update_yaxes(visible=False, range=[size[0], 0], autorange=False, row=4, col=1)
    key = " · ".join(f"<span style='color:rgb{tuple(int(c) for c in KIND_COLOURS[k])}'>■</span> {LINK_KINDS[k]}"
                     for k in range(1, len(LINK_KINDS)))
    fig.add_annotation(text=f"rows attend to columns: {key}", xref="paper", yref="paper", x=0.5, y=1.03,
                       yanchor="bottom", showarrow=False)
    fig.update_layout(
        title=dict(text=initial.layout.title.text, font=dict(size=13), y=0.99, yanchor="top"), height=1900,
        margin=dict(t=170, b=280), legend=dict(x=1.02, y=0.7, yanchor="top"),
        sliders=[_slider("fusion", FUSIONS, FUSIONS.index(config.fusion), -0.04),
                 dict(_slider("B", bottlenecks, bottlenecks.index(b0), -0.1), visible=config.fusion == "bottleneck"),
                 _slider("L_f", range(layers + 1), config.fusion_layer, -0.16)])
    return fig


def explorer_page(config: MBTConfig | None, results: str | Path | Sequence[Mapping[str, Any]] | None,
                  full_html: bool = True, overlays: Overlays = None, clip: Any = 0) -> str:
    """The explorer as HTML with plotly.js embedded and the page script: a whole page, or a fragment to embed."""
    fig = explorer_figure(config, results, overlays, clip)
    state = {s["name"]: s["steps"][s["active"]]["value"] for s in fig.to_dict()["layout"]["sliders"]}
    return fig.to_html(include_plotlyjs=True, full_html=full_html, auto_play=False,
                       post_script=_SCRIPT % json.dumps(state))


def explorer_html(config: MBTConfig | None, results: str | Path | Sequence[Mapping[str, Any]] | None,
                  path: str | Path, overlays: Overlays = None, clip: Any = 0) -> Path:
    """Write the kernel-free explorer as one self-contained HTML file (plotly.js embedded, no network)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(explorer_page(config, results, overlays=overlays, clip=clip), encoding="utf-8")
    return path


def explorer_view(config: MBTConfig | None = None,
                  results: str | Path | Sequence[Mapping[str, Any]] | None = None, overlays: Overlays = None,
                  clip: Any = 0) -> HTML:
    """The kernel-free explorer as a notebook output whose sliders keep working in the saved notebook's HTML."""
    return HTML(explorer_page(config, results, full_html=False, overlays=overlays, clip=clip))
