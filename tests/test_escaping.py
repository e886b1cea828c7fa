"""User text (class names and kinds, clip ids, run names, titles) reaches every widget and page escaped.

A hostile name goes through each writer; the raw tag must appear nowhere in what it writes (HTML widget
values, plotly figures, whose text plotly.js renders as HTML, and the pages), and the escaped text must.
"""
import html
import json

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

import ipywidgets as widgets  # noqa: E402

from mbt_core import suite  # noqa: E402
from mbt_core.analysis import per_class_ap as analysis, run_report  # noqa: E402
from mbt_core.config import MBTConfig  # noqa: E402
from mbt_core.model.flops import gflops  # noqa: E402
from mbt_core.recipes import RunConfig  # noqa: E402
from widgets.fusion_explorer import FusionExplorer  # noqa: E402
from widgets.rollout_stepper import RolloutStepper  # noqa: E402

HOSTILE = "<img src=x onerror=alert(1)>"
ESCAPED = html.escape(HOSTILE)
TINY = MBTConfig.preset("tiny", num_layers=2, fusion_layer=1)


def _assert_escaped(text: str) -> None:
    # plotly writes "<" in its JSON as \u003c: that form of the raw tag is caught too.
    assert HOSTILE not in text and HOSTILE.replace("<", "\\u003c").replace(">", "\\u003e") not in text
    assert ESCAPED in text


def _strings(obj) -> list[str]:
    """Every string inside a (plotly JSON) structure."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(k) + _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def _assert_figure_escaped(fig) -> None:
    strings = _strings(fig.to_plotly_json())
    assert not any(HOSTILE in s for s in strings) and any(ESCAPED in s for s in strings)
    _assert_escaped(fig.to_html(include_plotlyjs=False))


def _html_values(widget) -> str:
    """The values of every HTML widget under `widget`, joined."""
    own = [widget.value] if isinstance(widget, widgets.HTML) else []
    return "\n".join(own + [_html_values(c) for c in getattr(widget, "children", ())])


def _sweep(tmp_path):
    """A one-run sweep whose class kind is hostile (results.json + the run's config.json)."""
    out = tmp_path / "sweep"
    run_dir = out / "bottleneck-lf1-b4"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(RunConfig(TINY).to_dict()))
    row = {"fusion": "bottleneck", "fusion_layer": 1, "num_bottlenecks": 4, "num_layers": 2, "mAP": 0.5,
           "gflops": gflops(TINY), f"mAP_{HOSTILE}": 0.25, "run_dir": str(run_dir)}
    (out / "results.json").write_text(json.dumps([row]))
    return out


def test_fusion_explorer(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    ex = FusionExplorer(results=_sweep(tmp_path), overlays=lambda *key: image if key[3] == "other" else None,
                        clips=[HOSTILE, "other"])
    _assert_escaped(_html_values(ex))  # the kind in the mAP line, the clip id in the overlay note


def test_rollout_stepper_title():
    stepper = RolloutStepper(np.zeros((2, 8, 8, 3), np.uint8), np.ones((1, 2, 2)), title=f"run: {HOSTILE}")
    _assert_escaped(_html_values(stepper))


def test_static_explorer_page(tmp_path):
    from widgets.static_export import explorer_figure, explorer_html

    sweep = _sweep(tmp_path)
    _assert_figure_escaped(explorer_figure(TINY, sweep))
    _assert_escaped(explorer_html(TINY, sweep, tmp_path / "explorer.html").read_text())


def test_per_class_figures_and_their_pages(tmp_path):
    report = {"per_class_ap": {HOSTILE: 0.9, "dog": 0.5}, "positive_rate": {HOSTILE: 0.1, "dog": 0.2},
              "per_modality": {"spec": {"per_class_ap": {HOSTILE: 0.8, "dog": 0.6}},
                               "rgb": {"per_class_ap": {HOSTILE: 0.2, "dog": 0.3}}}}
    table = analysis.per_class_table(report, kinds={HOSTILE: HOSTILE, "dog": "audio"})
    for make in (analysis.top_classes_figure, analysis.fusion_gain_figure):
        fig = make(table, title=f"AP of {HOSTILE}")
        _assert_figure_escaped(fig)
        _assert_escaped(analysis.export_figure(fig, tmp_path / make.__name__)["html"].read_text())
    assert table[0]["class"] == HOSTILE  # the table keeps the name as it is: only what is drawn is escaped


def test_run_report_figures(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    (run_dir / "eval.json").write_text(json.dumps({"mAP": 0.5, "num_clips": 4, "mAP_by_kind": {HOSTILE: 0.5},
                                                   "positive_rate_by_kind": {HOSTILE: 0.1},
                                                   "per_class_ap": {HOSTILE: 0.5}}))
    _assert_figure_escaped(run_report.training_curves({HOSTILE: run_dir}))
    _assert_figure_escaped(run_report.summary_table(run_report.eval_summary({HOSTILE: run_dir})))


def test_suite_index(tmp_path):
    page = tmp_path / f"{HOSTILE}.html"
    index = suite.write_index(tmp_path, [page], {HOSTILE: f"mAP 0.5 ({HOSTILE} 0.4)"})
    _assert_escaped(index.read_text())


def test_attention_view_title():
    import jax

    from mbt_core import MBT, dummy_inputs
    from mbt_core.analysis.overlay import clip_attention
    from widgets.attention_view import AttentionView

    config = MBTConfig.preset("micro")
    params = MBT(config).init(jax.random.PRNGKey(0), dummy_inputs(config, 1), train=False)["params"]
    example = {m: np.zeros(x.shape[1:], np.float32) for m, x in dummy_inputs(config, 1).items()}
    _assert_escaped(_html_values(AttentionView(example, clip_attention(config, params, example), config,
                                               title=HOSTILE)))
