"""The `mbt predict --out` page: one self-contained HTML file (no kernel, no network) about one clip.

It holds the top-k tables of the fused model and of each modality's readout, the attention-rollout overlays on
the frames (summed over frames and per frame) and on the spectrogram, as the paper's Fig. 6, the share of each
modality's CLS attention spent on the fusion tokens per layer, and the clip's tokenisation (patch grids).
Figures are plotly with plotly.js inlined once; pictures are PNG data URIs. Every user string (file names,
class names, notes) is escaped, in the page and in the figures, whose text plotly.js renders as HTML.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mbt_core.analysis.clip_prediction import ClipPrediction, readout_name
from mbt_core.analysis.overlay import frames_overlay, select_map, spectrogram_overlay, summed_overlay
from mbt_core.analysis.patch_grid import frames_strip, spectrogram_grid, token_counts
from mbt_core.atomic_files import write_text
from mbt_core.data.tokenise import View
from mbt_core.media.images import encode_png, png_data_uri, tile

FRAME_WIDTH = 160  # pixels of one frame in the overlays
FRAMES_PER_ROW = 8
STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
         "margin:0.5em 1em 1em 0;display:inline-table;vertical-align:top}td,th{border:1px solid #ccc;padding:3px 8px}"
         "img{margin:4px;image-rendering:pixelated}.note{background:#fff3cd;padding:6px}")


def image_tag(image: np.ndarray, alt: str) -> str:
    """An <img> of an RGB uint8 image as a PNG data URI."""
    return f'<img src="{png_data_uri(encode_png(np.asarray(image, np.uint8)))}" alt="{html.escape(alt)}">'


def prediction_figure(prediction: ClipPrediction) -> go.Figure:
    """Top-k bars: one panel per readout (columns) and head (rows), class names escaped."""
    readouts, heads = list(prediction.scores), list(prediction.classes)
    titles = [html.escape(readout_name(r) + (f", {h}" if len(heads) > 1 else "")) for h in heads for r in readouts]
    fig = make_subplots(rows=len(heads), cols=len(readouts), subplot_titles=titles, horizontal_spacing=0.25)
    for row, head in enumerate(heads, 1):
        for col, readout in enumerate(readouts, 1):
            top = prediction.top(readout, head)[::-1]  # best at the top
            names = [html.escape(name) for _, name, _ in top]
            fig.add_trace(go.Bar(x=[s for *_, s in top], y=[f"{n} " for n in names], orientation="h",
                                 hovertext=names, hoverinfo="text+x", showlegend=False), row=row, col=col)
            fig.update_xaxes(range=[0, 1], row=row, col=col)
    fig.update_layout(height=120 + 40 * prediction.top_k * len(heads), margin=dict(l=10, r=10, t=60, b=30))
    return fig


def share_figure(shares: Mapping[str, list[float]], fusion_layer: int) -> go.Figure:
    """Per layer, the share of each modality's CLS attention spent outside its own tokens (fusion tokens)."""
    fig = go.Figure()
    for m, values in shares.items():
        fig.add_trace(go.Bar(x=list(range(1, len(values) + 1)), y=values, name=html.escape(f"{m} CLS")))
    fig.add_vline(x=fusion_layer + 0.5, line_dash="dot", annotation_text=f"fusion from layer {fusion_layer + 1}")
    fig.update_layout(barmode="group", height=320, xaxis_title="layer", yaxis=dict(title="share", range=[0, 1]),
                      margin=dict(t=30, b=40))
    return fig


def _table(prediction: ClipPrediction, readout: str, head: str) -> str:
    """One top-k table as HTML, names escaped."""
    title = readout_name(readout) + (f", {head}" if len(prediction.classes) > 1 else "")
    rows = "".join(f"<tr><td>{rank}</td><td>{html.escape(name)}</td><td>{score:.4f}</td></tr>"
                   for rank, (_, name, score) in enumerate(prediction.top(readout, head), 1))
    return f"<table><caption>{html.escape(title)}</caption><tr><th>#</th><th>class</th><th>score</th></tr>{rows}</table>"


def _overlays(view: View, rollout: Mapping[str, Any]) -> str:
    """Fig. 6: the rollout of the output CLS tokens (averaged, as the classifier) on frames and spectrogram."""
    parts = []
    size = (round(FRAME_WIDTH * view.frames.shape[1] / view.frames.shape[2]), FRAME_WIDTH)
    if "rgb" in rollout["modalities"]:
        grid_map = select_map(rollout, "rgb")
        parts.append("<h3>Frames: the map summed over all frames</h3>"
                     + image_tag(summed_overlay(view.frames, grid_map, size=size), "summed rollout on the middle frame"))
        per_frame = frames_overlay(view.frames, grid_map, rollout["patch_shapes"]["rgb"][0], size)
        times = ", ".join(f"{t:.2f}" for t in view.frame_times)
        parts.append(f"<h3>Frames: the map of each frame (at {times} s)</h3>"
                     + image_tag(tile(per_frame, FRAMES_PER_ROW), "rollout on each frame"))
    if "spec" in rollout["modalities"]:
        width = 4 * FRAME_WIDTH
        height = max(round(view.spectrogram.shape[1] * width / view.spectrogram.shape[0]), width // 4)
        parts.append("<h3>Spectrogram (time across, low mel bins at the bottom)</h3>"
                     + image_tag(spectrogram_overlay(view.spectrogram, select_map(rollout, "spec"), (height, width)),
                                 "rollout on the spectrogram"))
    return "\n".join(parts)


def _tokenisation(view: View, modalities: tuple[str, ...]) -> str:
    """The clip as the model sees it: frames and spectrogram with their patch grids, and the token counts."""
    counts = token_counts(view)
    scale = max(1, 96 // view.frames.shape[2])
    parts = [f"<p>{len(view.frames)} frames of {view.frames.shape[1]}x{view.frames.shape[2]} pixels, "
             f"{counts['rgb']} RGB tokens (grid {view.rgb_grid}, patch {view.rgb_patch}); spectrogram "
             f"{view.spectrogram.shape[0]} x {view.spectrogram.shape[1]} mel, {counts['spec']} tokens "
             f"(grid {view.spec_grid}, patch {view.spec_patch}).</p>",
             image_tag(frames_strip(view, scale), "frames with the patch grid")]
    if "spec" in modalities:
        parts.append(image_tag(spectrogram_grid(view, max(1, 400 // view.spectrogram.shape[0])),
                               "spectrogram with the patch grid"))
    return "\n".join(parts)


def report_html(prediction: ClipPrediction, view: View, rollout: Mapping[str, Any],
                shares: Mapping[str, list[float]], fusion_layer: int, facts: Mapping[str, str]) -> str:
    """The whole page: facts (checkpoint, clip, geometry), notes, tables and figures, overlays, tokenisation."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in prediction.notes)
    tables = "".join(_table(prediction, r, h) for h in prediction.classes for r in prediction.scores)
    figure = prediction_figure(prediction).to_html(include_plotlyjs=True, full_html=False)
    if len(prediction.modalities) > 1:
        share = ("<p>The share of each modality's CLS attention (heads averaged) that goes to the fusion tokens "
                 "(bottleneck layers) or to the other modality's tokens (cross- and self-attention layers); 0 below "
                 "the fusion layer.</p>" + share_figure(shares, fusion_layer).to_html(include_plotlyjs=False,
                                                                                       full_html=False))
    else:
        share = "<p>The model read one modality: no attention crosses between modalities.</p>"
    title = html.escape(f"MBT prediction: {Path(view.path).name}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style></head>"
            f"<body><h1>{title}</h1><table>{rows}</table>{notes}<h2>Top classes</h2>{tables}{figure}"
            f"<h2>Where the model looked (attention rollout, Fig. 6)</h2><p>Rollout over the whole attention graph "
            f"of the centred window; the map read by the output CLS tokens, averaged as the classifier averages "
            f"them.</p>{_overlays(view, rollout)}<h2>Attention on the fusion tokens</h2>{share}"
            f"<h2>Tokenisation</h2>{_tokenisation(view, prediction.modalities)}</body></html>")


def write_report(path: str | Path, page: str) -> Path:
    """Write the page whole (a temporary name, renamed when complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, page)
