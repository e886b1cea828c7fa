"""What a set of run directories shows: training curves and evaluation summaries, as plotly figures/rows.

AP's chance level is the positive rate, not 0.5, so summaries carry both. Run and kind names are the
user's: figures show them escaped (plotly.js reads text as HTML); `eval_summary` rows keep them as they are.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping

import plotly.graph_objects as go

from mbt_core.run_dir import EVAL, read_eval, read_metrics


def training_curves(run_dirs: Mapping[str, str | Path]) -> go.Figure:
    """Training loss (and validation mAP where logged) against step, one line per run."""
    fig = go.Figure()
    for name, run_dir in run_dirs.items():
        rows = read_metrics(run_dir)
        name = html.escape(name)
        fig.add_trace(go.Scatter(x=[r["step"] for r in rows], y=[r["loss"] for r in rows], mode="lines", name=name))
        val = [r for r in rows if "val_mAP" in r]
        if val:
            fig.add_trace(go.Scatter(x=[r["step"] for r in val], y=[r["val_mAP"] for r in val], mode="lines+markers",
                                     name=f"{name} val mAP", yaxis="y2"))
    fig.update_layout(title="Training loss (per-modality losses averaged)", xaxis_title="step", yaxis_title="loss",
                      yaxis2=dict(title="val mAP", overlaying="y", side="right", range=[0, 1]), height=420)
    return fig


def eval_summary(run_dirs: Mapping[str, str | Path]) -> list[dict]:
    """One row per evaluated run: mAP, and mAP with the positive rate per class kind."""
    rows = []
    for name, run_dir in run_dirs.items():
        if not (Path(run_dir) / EVAL).exists():
            continue
        report = read_eval(run_dir)
        row = {"run": name, "mAP": round(report["mAP"], 4), "clips": report["num_clips"]}
        for kind, value in report.get("mAP_by_kind", {}).items():
            row[f"AP {kind}"] = round(value, 4)
            row[f"chance {kind}"] = round(report["positive_rate_by_kind"][kind], 4)
        rows.append(row)
    return rows


def summary_table(rows: list[dict]) -> go.Figure:
    """A plotly table of `eval_summary` rows."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    text = lambda value: html.escape(value) if isinstance(value, str) else value
    return go.Figure(go.Table(header=dict(values=[text(c) for c in columns]),
                              cells=dict(values=[[text(r.get(c, "")) for r in rows] for c in columns])))
