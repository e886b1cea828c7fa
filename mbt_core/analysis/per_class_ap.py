"""Per-class AP of fusion against audio-only and visual-only models (the paper's appendix, Figs. 3-4).

The inputs are `eval.json` reports (`evaluate.evaluation_report`, read by `run_dir.read_eval`): one of the
fusion run, and one each of an audio-only (`model.modalities=('spec',)`) and a visual-only (`('rgb',)`) run. Without single-modality runs,
the fusion run's own `per_modality` heads stand in, and every row says which source it used. Classes are
ranked by fusion AP; classes without AP (no positives in the split) are kept apart, never counted as 0.
AP's chance level is a class's positive rate, so the figures mark it per class.
"""
from __future__ import annotations

import html
import importlib
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

AUDIO, VISUAL = "spec", "rgb"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
COLOURS = {"fusion": "#1f77b4", "audio": "#ff7f0e", "visual": "#2ca02c"}


def _unimodal(fusion_eval: Mapping[str, Any], run_eval: Mapping[str, Any] | None, modality: str,
              role: str) -> tuple[dict[str, Any] | None, str]:
    """Per-class AP of one modality and where it came from: its own run, else the fusion run's head."""
    if run_eval is not None:
        heads = set(run_eval.get("per_modality", {}))
        if heads and heads != {modality}:
            raise ValueError(f"{role}_eval: expected a {role}-only run (per_modality {{{modality!r}}}), "
                             f"got per_modality {sorted(heads)}")
        return run_eval["per_class_ap"], f"{role}-only run"
    head = fusion_eval.get("per_modality", {}).get(modality)
    if head is None:
        return None, "none"
    return head["per_class_ap"], f"fusion run's {modality} head"


def per_class_table(fusion_eval: Mapping[str, Any], audio_eval: Mapping[str, Any] | None = None,
                    visual_eval: Mapping[str, Any] | None = None,
                    kinds: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per class (appendix Figs. 3-4): AP of fusion / audio / visual, positive rate, gain over the best unimodal.

    Rows with a fusion AP come first, ranked by it (`rank` 1, 2, ...); classes without one follow with
    `excluded=True` and `rank=None`. `gain` = fusion − max(audio, visual) over the APs that exist.
    `audio_source` / `visual_source` name the single-modality run or the fusion run's head used.
    """
    classes = list(fusion_eval["per_class_ap"])
    audio, audio_source = _unimodal(fusion_eval, audio_eval, AUDIO, "audio")
    visual, visual_source = _unimodal(fusion_eval, visual_eval, VISUAL, "visual")
    for role, ap in (("audio", audio), ("visual", visual)):
        if ap is not None and set(ap) != set(classes):
            diff = sorted(set(ap) ^ set(classes))
            raise ValueError(f"{role} AP and fusion AP cover different classes: {diff[:10]}")
    kinds = kinds if kinds is not None else fusion_eval.get("class_kinds", {})
    rates = fusion_eval.get("positive_rate", {})
    rows = []
    for name in classes:
        row = {"class": name, "kind": kinds.get(name, ""), "ap_fusion": fusion_eval["per_class_ap"][name],
               "ap_audio": None if audio is None else audio[name], "ap_visual": None if visual is None else visual[name],
               "positive_rate": rates.get(name)}
        unimodal = {k: row[f"ap_{k}"] for k in ("audio", "visual") if row[f"ap_{k}"] is not None}
        best = max(unimodal, key=unimodal.get) if unimodal else None
        row["best_unimodal"] = best
        row["gain"] = None if best is None or row["ap_fusion"] is None else row["ap_fusion"] - unimodal[best]
        row.update(excluded=row["ap_fusion"] is None, rank=None, audio_source=audio_source,
                   visual_source=visual_source)
        rows.append(row)
    ranked = sorted((r for r in rows if not r["excluded"]), key=lambda r: -r["ap_fusion"])  # stable: ties keep order
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    return ranked + [r for r in rows if r["excluded"]]


def summary(table: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """mAP of each model over the ranked classes (excluded ones left out), classes fusion wins, excluded names, sources."""
    ranked = [r for r in table if not r["excluded"]]
    mean = lambda key: (float(np.mean(v)) if (v := [r[key] for r in ranked if r[key] is not None]) else None)
    gains = [r["gain"] for r in ranked if r["gain"] is not None]
    return {"classes": len(ranked), "mAP": {k: mean(f"ap_{k}") for k in ("fusion", "audio", "visual")},
            "fusion_beats_both": sum(g > 0 for g in gains), "compared": len(gains),
            "excluded": [r["class"] for r in table if r["excluded"]],
            "audio_source": table[0]["audio_source"] if table else None,
            "visual_source": table[0]["visual_source"] if table else None}


def _label(row: Mapping[str, Any], role: str) -> str:
    """Legend name of the audio or visual model, saying whether it is its own run or the fusion run's head."""
    source = row[f"{role}_source"]
    return f"{role}-only" if source.endswith("-only run") else f"{role} ({source})"


def top_classes_figure(table: Sequence[Mapping[str, Any]], n: int = 60, title: str | None = None) -> go.Figure:
    """Grouped horizontal AP bars for the top-n classes by fusion AP: fusion, audio, visual, and chance (positive rate)."""
    rows = [r for r in table if not r["excluded"]][:n]
    if not rows:
        raise ValueError("the table has no class with an AP to plot")
    # Class names and kinds come from the data card; plotly.js reads text as HTML, so they go in escaped.
    names = [html.escape(r["class"]) for r in rows]
    hover = "%{y} (%{customdata})<br>AP %{x:.3f}<extra>%{fullData.name}</extra>"
    kinds = [html.escape(r["kind"] or "kind unknown") for r in rows]
    fig = go.Figure()
    for role, name in (("fusion", "fusion"), ("audio", _label(rows[0], "audio")),
                       ("visual", _label(rows[0], "visual"))):
        values = [r[f"ap_{role}"] for r in rows]
        if role != "fusion" and all(v is None for v in values):
            continue
        fig.add_bar(name=name, y=names, x=values, orientation="h", marker_color=COLOURS[role],
                    customdata=kinds, hovertemplate=hover)
    if any(r["positive_rate"] is not None for r in rows):
        fig.add_scatter(name="chance (positive rate)", y=names, x=[r["positive_rate"] for r in rows], mode="markers",
                        marker=dict(symbol="line-ns", size=18, line=dict(width=2, color="black")),
                        customdata=kinds, hovertemplate="%{y}: positive rate %{x:.3f}<extra>chance AP</extra>")
    fig.update_layout(
        title=html.escape(title) if title else f"Per-class AP, top {len(rows)} classes by fusion AP",
        barmode="group", bargap=0.25, height=140 + 42 * len(rows), template="plotly_white",
        xaxis=dict(title="average precision", range=[0, 1]),
        yaxis=dict(categoryorder="array", categoryarray=names, autorange="reversed"),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0))
    return fig


def fusion_gain_figure(table: Sequence[Mapping[str, Any]], n: int = 60, title: str | None = None) -> go.Figure:
    """Fusion AP minus the better unimodal AP for the top-n classes by fusion AP (appendix): green where fusion wins."""
    rows = [r for r in table if not r["excluded"] and r["gain"] is not None][:n]
    if not rows:
        raise ValueError("the table has no class with both a fusion and a unimodal AP")
    gains = [r["gain"] for r in rows]
    best = [_label(r, r["best_unimodal"]) for r in rows]
    wins = sum(g > 0 for g in gains)
    names = [html.escape(r["class"]) for r in rows]
    fig = go.Figure(go.Bar(
        name="fusion − best unimodal", y=names, x=gains, orientation="h",
        marker_color=["#2ca02c" if g > 0 else "#d62728" for g in gains], customdata=best,
        hovertemplate="%{y}: %{x:+.3f} AP over %{customdata}<extra></extra>"))
    fig.update_layout(
        title=html.escape(title) if title else f"Fusion gain over the better unimodal model: {wins} of {len(rows)} classes improve",
        height=140 + 22 * len(rows), template="plotly_white", xaxis=dict(title="AP gain", zeroline=True),
        yaxis=dict(categoryorder="array", categoryarray=names, autorange="reversed"))
    return fig


def _png_possible() -> bool:
    """Whether kaleido can write a PNG here: it is installed and a Chrome/Chromium is on PATH."""
    try:
        importlib.import_module("kaleido")
    except ImportError:
        return False
    return any(shutil.which(b) for b in BROWSERS)


def export_figure(fig: go.Figure, path_stem: str | Path) -> dict[str, Path]:
    """Write `<stem>.html` (plotly.js inlined, works offline) and `<stem>.png` where kaleido and a Chrome exist;
    the files written, by kind (the PNG is an extra: without it nothing is printed, the HTML is the figure)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = Path(f"{stem}.html")
    fig.write_html(html, include_plotlyjs=True)
    written = {"html": html}
    if _png_possible():
        png = Path(f"{stem}.png")
        try:
            fig.write_image(png)
            written["png"] = png
        except Exception:  # kaleido's failures vary by version and browser; the HTML is already written
            pass
    return written


def stream_eval(report: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """One modality's stream of a run as a single-modality eval (late fusion's streams are unimodal models)."""
    streams = report.get("per_modality", {})
    if modality not in streams:
        raise ValueError(f"eval has no {modality!r} stream; streams: {sorted(streams)}")
    return {**streams[modality], "per_modality": {modality: streams[modality]},
            "class_kinds": report.get("class_kinds", {})}
