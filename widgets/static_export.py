"""The FusionExplorer without a kernel: one self-contained HTML page whose sliders step over a precomputed grid.

`explorer_figure` precomputes, with the widget's own `explorer_state`, every (fusion, B, L_f) setting as a
plotly frame: the attention-flow mask summary (one cell per token group) of the unimodal and the fused
layers, GFLOPs against L_f in both conventions with the current L_f marked (Fig. 3, right), and mAP against
L_f from the sweep with the current setting marked. Three `layout.sliders` (fusion, B, L_f) pick the frame:
their steps do nothing themselves (`method="skip"`); a few lines of page script join the three values into
the frame's name and call `Plotly.animate`. B changes nothing but bottleneck fusion, so the other fusions
have one frame per L_f, computed at the config's B. `explorer_html` writes the page and `explorer_view` is the
same as a notebook output, plotly.js embedded: it works offline, in executed notebooks' HTML, on nbviewer
and on static pages, not where scripts are stripped (GitHub's notebook view). `explorer_figure(...).show()`
draws the figure without the page script: there the sliders do nothing.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from IPython.display import HTML
from plotly.subplots import make_subplots

from mbt_core.analysis.flow_mask import LINK_KINDS, token_layout
from mbt_core.config import FUSIONS, MBTConfig
from mbt_core.run_dir import read_results
from widgets.fusion_explorer import (CONVENTION_NAMES, KIND_COLOURS, bottleneck_options, explorer_state,
                                     format_gflops, sweep_config)

SLIDERS = ("fusion", "B", "L_f")
# Step colours for the LINK_KINDS codes 0..3 on a 0..3 colour axis.
_COLOURSCALE = [[edge, f"rgb{tuple(int(c) for c in KIND_COLOURS[k])}"]
                for k in range(len(LINK_KINDS)) for edge in (k / len(LINK_KINDS), (k + 1) / len(LINK_KINDS))]
# Page script: the three sliders' values name the frame to show.
_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var state = %s;
gd.on('plotly_sliderchange', function (e) {
  state[(e.slider._input || e.slider).name] = String(e.step.value !== undefined ? e.step.value : e.step.label);
  var b = state.fusion === 'bottleneck' ? state.B : 'any';
  Plotly.animate(gd, [state.fusion + '|' + b + '|' + state.L_f],
                 {mode: 'immediate', frame: {duration: 0, redraw: true}, transition: {duration: 0}});
});
"""


def frame_name(fusion: str, num_bottlenecks: int, fusion_layer: int) -> str:
    """Name of the frame of one setting, as the page script builds it (B only matters to bottleneck fusion)."""
    return f"{fusion}|{num_bottlenecks if fusion == 'bottleneck' else 'any'}|{fusion_layer}"


def _title(state: Mapping[str, Any], fusion: str, b: int, lf: int) -> str:
    """One line naming the setting, its GFLOPs and its mAP."""
    cfg = state["config"]
    cost = " / ".join(f"{format_gflops(v)} ({CONVENTION_NAMES[c]})" for c, v in state["gflops"].items())
    score = "mAP " + (f"{state['mAP']:.3f}" if state["mAP"] is not None else "-")
    if state["mAP_by_kind"]:
        score += " (" + ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in state["mAP_by_kind"].items()) + ")"
    note = f" [{html.escape(state['run_note'])}]" if state["run_note"] else ""
    b_text = f", B = {b}" if fusion == "bottleneck" else ""
    return (f"<b>{fusion.replace('_', ' ')} fusion, L_f = {lf} of {cfg.num_layers}{b_text}</b><br>"
            f"GFLOPs per clip: {cost}<br>{score}{note}")


def _mask_traces(state: Mapping[str, Any], names: list[str]) -> list[go.Heatmap]:
    """The unfused and fused group masks on the fixed group axes (absent groups and layer ranges left blank)."""
    where = [names.index(g.name) for g in state["groups"]]
    sizes = {g.name: g.size for g in state["groups"]}
    traces = []
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
    return traces


def _frame_traces(state: Mapping[str, Any], names: list[str], map_curve: list[float | None],
                  lf: int) -> list[Any]:
    """All traces of one setting, in a fixed order (masks, GFLOPs curves, GFLOPs mark, mAP curve, mAP mark)."""
    xs = list(range(len(map_curve)))
    curves = [go.Scatter(x=xs, y=state["gflops_curve"][c], mode="lines+markers", name=f"GFLOPs, {CONVENTION_NAMES[c]}")
              for c in state["gflops_curve"]]
    mark = go.Scatter(x=[lf] * len(state["gflops"]), y=list(state["gflops"].values()), mode="markers",
                      marker=dict(size=13, symbol="circle-open", color="black", line=dict(width=2)),
                      name="current L_f", showlegend=False)
    score = go.Scatter(x=xs, y=map_curve, mode="lines+markers", name="mAP (sweep)", connectgaps=False)
    score_mark = go.Scatter(x=[lf] if state["mAP"] is not None else [], y=[state["mAP"]] if state["mAP"] is not None
                            else [], mode="markers", showlegend=False,
                            marker=dict(size=13, symbol="circle-open", color="black", line=dict(width=2)))
    return [*_mask_traces(state, names), *curves, mark, score, score_mark]


def _slider(name: str, values: Sequence, active: int, y: float) -> dict[str, Any]:
    """A slider whose steps only carry values (the page script acts on them)."""
    return dict(name=name, active=active, x=0.08, len=0.84, y=y, yanchor="top", pad=dict(t=10, b=0),
                currentvalue=dict(prefix=f"{name} = "),
                steps=[dict(label=str(v), value=str(v), method="skip", args=[]) for v in values])


def explorer_figure(config: MBTConfig | None = None,
                    results: str | Path | Sequence[Mapping[str, Any]] | None = None) -> go.Figure:
    """The explorer as one plotly figure with a frame per (fusion, B, L_f) setting and three sliders."""
    rows = read_results(results) if isinstance(results, (str, Path)) else results
    config = config or (rows and sweep_config(rows)) or MBTConfig.preset("paper-b16")
    layers = config.num_layers
    bottlenecks = bottleneck_options(config, rows or ())
    b0 = max(config.num_bottlenecks, 1)
    names = [g.name for g in token_layout(config.replace(fusion="bottleneck", fusion_layer=0, num_bottlenecks=b0))]
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.16, horizontal_spacing=0.14, subplot_titles=(
        "layers below L_f (unimodal)", "layers from L_f on (fused)", "GFLOPs per clip against L_f",
        "mAP against L_f (sweep)"))
    frames = []
    for fusion in FUSIONS:
        for b in (bottlenecks if fusion == "bottleneck" else [b0]):
            states = [explorer_state(config, fusion, lf, b, rows, max_tokens=0) for lf in range(layers + 1)]
            map_curve = [s["mAP"] for s in states]
            frames += [go.Frame(name=frame_name(fusion, b, lf), data=_frame_traces(state, names, map_curve, lf),
                                layout=go.Layout(title_text=_title(state, fusion, b, lf)))
                       for lf, state in enumerate(states)]
    fig.frames = frames
    initial = next(f for f in frames if f.name == frame_name(config.fusion, b0, config.fusion_layer))
    for trace, (row, col) in zip(initial.data, [(1, 1), (1, 2), (2, 1), (2, 1), (2, 1), (2, 2), (2, 2)]):
        fig.add_trace(trace, row=row, col=col)
    for col in (1, 2):
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_xaxes(title_text="L_f", dtick=1, row=2)
    fig.update_yaxes(title_text="GFLOPs", row=2, col=1)
    fig.update_yaxes(title_text="mAP", row=2, col=2, **({} if rows else dict(range=[0, 1])))
    key = " · ".join(f"<span style='color:rgb{tuple(int(c) for c in KIND_COLOURS[k])}'>■</span> {LINK_KINDS[k]}"
                     for k in range(1, len(LINK_KINDS)))
    fig.add_annotation(text=f"rows attend to columns: {key}", xref="paper", yref="paper", x=0.5, y=1.05,
                       yanchor="bottom", showarrow=False)
    fig.update_layout(
        title=dict(text=initial.layout.title.text, font=dict(size=14), y=0.985, yanchor="top"), height=1150,
        margin=dict(t=150, b=330), legend=dict(x=1.02, y=0.42, yanchor="top"),
        sliders=[_slider("fusion", FUSIONS, FUSIONS.index(config.fusion), -0.1),
                 _slider("B", bottlenecks, bottlenecks.index(b0), -0.23),
                 _slider("L_f", range(layers + 1), config.fusion_layer, -0.36)])
    return fig


def explorer_page(config: MBTConfig | None, results: str | Path | Sequence[Mapping[str, Any]] | None,
                  full_html: bool = True) -> str:
    """The explorer as HTML with plotly.js embedded and the page script: a whole page, or a fragment to embed."""
    fig = explorer_figure(config, results)
    state = {s["name"]: s["steps"][s["active"]]["value"] for s in fig.to_dict()["layout"]["sliders"]}
    return fig.to_html(include_plotlyjs=True, full_html=full_html, auto_play=False,
                       post_script=_SCRIPT % json.dumps(state))


def explorer_html(config: MBTConfig | None, results: str | Path | Sequence[Mapping[str, Any]] | None,
                  path: str | Path) -> Path:
    """Write the kernel-free explorer as one self-contained HTML file (plotly.js embedded, no network)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(explorer_page(config, results), encoding="utf-8")
    return path


def explorer_view(config: MBTConfig | None = None,
                  results: str | Path | Sequence[Mapping[str, Any]] | None = None) -> HTML:
    """The kernel-free explorer as a notebook output whose sliders keep working in the saved notebook's HTML."""
    return HTML(explorer_page(config, results, full_html=False))
