"""mbt_core.analysis.per_class_ap: per-class AP table against a hand computation, appendix figures, HTML/PNG export."""
import csv
import json
import sys
import types
import warnings

import numpy as np
import pytest

from mbt_core.analysis import per_class_ap as analysis
from mbt_core.run_dir import read_eval
from mbt_core.train.evaluate import evaluation_report

CLASSES = ["dog_bark", "bicycle", "siren", "ghost", "piano"]  # "ghost" has no positives: AP None
KINDS = {"dog_bark": "audio", "bicycle": "visual", "siren": "audio", "ghost": "visual", "piano": "pairing"}
RATES = {"dog_bark": 0.2, "bicycle": 0.1, "siren": 0.05, "ghost": 0.0, "piano": 0.3}


def _report(aps, heads=None):
    report = {"mAP": 0.0, "per_class_ap": dict(zip(CLASSES, aps)), "positive_rate": dict(RATES)}
    if heads:
        report["per_modality"] = {m: {"per_class_ap": dict(zip(CLASSES, a))} for m, a in heads.items()}
    return report


FUSION = _report([0.8, 0.6, 0.9, None, 0.5],
                 heads={"spec": [0.7, 0.2, 0.95, None, 0.1], "rgb": [0.3, 0.55, 0.2, None, 0.4]})
AUDIO = _report([0.85, 0.1, 0.7, None, 0.3], heads={"spec": [0.85, 0.1, 0.7, None, 0.3]})
VISUAL = _report([0.2, 0.5, 0.1, None, 0.45], heads={"rgb": [0.2, 0.5, 0.1, None, 0.45]})


def test_gain_and_ranking_match_a_hand_computation():
    table = analysis.per_class_table(FUSION, AUDIO, VISUAL, kinds=KINDS)
    assert [r["class"] for r in table] == ["siren", "dog_bark", "bicycle", "piano", "ghost"]
    assert [r["rank"] for r in table] == [1, 2, 3, 4, None]
    by_name = {r["class"]: r for r in table}
    # gain = fusion - max(audio, visual), by hand:
    expected = {"siren": (0.9 - 0.7, "audio"), "dog_bark": (0.8 - 0.85, "audio"), "bicycle": (0.6 - 0.5, "visual"),
                "piano": (0.5 - 0.45, "visual")}
    for name, (gain, best) in expected.items():
        assert by_name[name]["gain"] == pytest.approx(gain) and by_name[name]["best_unimodal"] == best
    siren = by_name["siren"]
    assert (siren["ap_fusion"], siren["ap_audio"], siren["ap_visual"]) == (0.9, 0.7, 0.1)
    assert siren["kind"] == "audio" and siren["positive_rate"] == 0.05
    assert siren["audio_source"] == "audio-only run" and siren["visual_source"] == "visual-only run"


def test_excluded_classes_are_listed_apart_not_averaged_as_zero():
    table = analysis.per_class_table(FUSION, AUDIO, VISUAL)
    ghost = table[-1]
    assert ghost["class"] == "ghost" and ghost["excluded"] and ghost["ap_fusion"] is None and ghost["gain"] is None
    stats = analysis.summary(table)
    assert stats["mAP"]["fusion"] == pytest.approx((0.9 + 0.8 + 0.6 + 0.5) / 4)  # 0.7, not 2.8 / 5
    assert stats["mAP"]["audio"] == pytest.approx((0.85 + 0.1 + 0.7 + 0.3) / 4)
    assert stats["excluded"] == ["ghost"] and stats["classes"] == 4
    assert (stats["fusion_beats_both"], stats["compared"]) == (3, 4)


def test_without_single_modality_runs_the_fusion_heads_stand_in_and_say_so():
    table = analysis.per_class_table(FUSION)
    by_name = {r["class"]: r for r in table}
    assert by_name["siren"]["ap_audio"] == 0.95 and by_name["siren"]["gain"] == pytest.approx(0.9 - 0.95)
    assert by_name["bicycle"]["ap_visual"] == 0.55 and by_name["bicycle"]["best_unimodal"] == "visual"
    assert table[0]["audio_source"] == "fusion run's spec head" and table[0]["visual_source"] == "fusion run's rgb head"
    # Mixed: an audio-only run, the fusion run's rgb head for vision.
    mixed = analysis.per_class_table(FUSION, audio_eval=AUDIO)
    assert mixed[0]["audio_source"] == "audio-only run" and mixed[0]["visual_source"] == "fusion run's rgb head"
    bare = analysis.per_class_table({"per_class_ap": FUSION["per_class_ap"], "positive_rate": RATES})
    assert bare[0]["ap_audio"] is None and bare[0]["gain"] is None and bare[0]["audio_source"] == "none"


def test_swapped_or_mismatched_runs_are_rejected():
    with pytest.raises(ValueError, match="audio-only run"):
        analysis.per_class_table(FUSION, audio_eval=VISUAL)
    with pytest.raises(ValueError, match="audio-only run"):
        analysis.per_class_table(FUSION, audio_eval=FUSION)
    other = _report([0.1] * 5)
    other["per_class_ap"] = {"cat": 0.5, **{c: 0.1 for c in CLASSES[1:]}}
    with pytest.raises(ValueError, match="cat.*dog_bark"):
        analysis.per_class_table(FUSION, visual_eval=other)


def test_a_real_evaluation_report_and_its_run_directory(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 5)) < 0.3).astype(np.float32)
    targets[:, 3] = 0  # no positives: excluded
    logits = {k: rng.normal(size=(40, 5)) + 2 * targets for k in ("fused", "spec", "rgb")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as evaluate_run: excluded classes are reported in the file
        report = evaluation_report(logits, targets, CLASSES, "multi_label", KINDS)
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps(report))
    with open(run / "per_class_ap.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "kind", "ap", "positive_rate"])
        writer.writerows([c, KINDS[c], report["per_class_ap"][c], report["positive_rate"][c]] for c in CLASSES)
    loaded = read_eval(run)
    assert loaded["class_kinds"] == KINDS
    table = analysis.per_class_table(loaded)
    assert table[-1]["class"] == "ghost" and table[-1]["excluded"]
    stats = analysis.summary(table)
    assert stats["mAP"]["fusion"] == pytest.approx(report["mAP"])
    assert stats["mAP"]["audio"] == pytest.approx(report["per_modality"]["spec"]["mAP"])
    for row in table[:-1]:
        assert row["ap_fusion"] == report["per_class_ap"][row["class"]]
        assert row["kind"] == KINDS[row["class"]]
    with pytest.raises(FileNotFoundError, match="eval.json"):
        read_eval(tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_eval(tmp_path / "bad.json")


def test_top_classes_figure_has_the_models_chance_and_the_class_order():
    table = analysis.per_class_table(FUSION, AUDIO, VISUAL, kinds=KINDS)
    fig = analysis.top_classes_figure(table, n=3)
    names = [t.name for t in fig.data]
    assert names == ["fusion", "audio-only", "visual-only", "chance (positive rate)"]
    top = ["siren", "dog_bark", "bicycle"]
    for trace in fig.data:
        assert list(trace.y) == top
    assert list(fig.data[0].x) == [0.9, 0.8, 0.6]
    assert list(fig.data[1].x) == [0.7, 0.85, 0.1] and list(fig.data[2].x) == [0.1, 0.2, 0.5]
    assert list(fig.data[3].x) == [RATES[c] for c in top]  # AP's chance level is the positive rate
    assert list(fig.layout.yaxis.categoryarray) == top and fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.barmode == "group" and all(t.orientation == "h" for t in fig.data[:3])
    whole = analysis.top_classes_figure(table)
    assert "ghost" not in whole.data[0].y and len(whole.data[0].y) == 4
    heads = analysis.top_classes_figure(analysis.per_class_table(FUSION))
    assert [t.name for t in heads.data][1:3] == ["audio (fusion run's spec head)", "visual (fusion run's rgb head)"]


def test_fusion_gain_figure():
    table = analysis.per_class_table(FUSION, AUDIO, VISUAL)
    fig = analysis.fusion_gain_figure(table)
    bar = fig.data[0]
    assert list(bar.y) == ["siren", "dog_bark", "bicycle", "piano"]
    np.testing.assert_allclose(bar.x, [0.2, -0.05, 0.1, 0.05])
    assert bar.marker.color[1] != bar.marker.color[0] == bar.marker.color[2]
    assert list(bar.customdata) == ["audio-only", "audio-only", "visual-only", "visual-only"]
    assert "3 of 4" in fig.layout.title.text
    with pytest.raises(ValueError, match="unimodal"):
        analysis.fusion_gain_figure(analysis.per_class_table({"per_class_ap": FUSION["per_class_ap"]}))


def test_export_writes_offline_html_and_skips_png_silently(tmp_path, monkeypatch, capsys):
    fig = analysis.top_classes_figure(analysis.per_class_table(FUSION, AUDIO, VISUAL))
    monkeypatch.setattr(analysis.shutil, "which", lambda name: None)
    written = analysis.export_figure(fig, tmp_path / "figs" / "top.v2")
    assert written == {"html": tmp_path / "figs" / "top.v2.html"}
    text = written["html"].read_text()
    assert "plotly.js v" in text and '<script src="https://cdn.plot.ly' not in text and "siren" in text
    assert capsys.readouterr().out == ""  # the HTML is the figure: a page shows no excuse for a missing extra
    assert not (tmp_path / "figs" / "top.v2.png").exists()
    # With kaleido importable but no Chrome: still skipped.
    monkeypatch.setitem(sys.modules, "kaleido", types.ModuleType("kaleido"))
    assert set(analysis.export_figure(fig, tmp_path / "again")) == {"html"}
    assert capsys.readouterr().out == ""
    # With both, the PNG goes through fig.write_image (kaleido).
    monkeypatch.setattr(analysis.shutil, "which", lambda name: "/usr/bin/chromium" if name == "chromium" else None)
    calls = []
    monkeypatch.setattr(type(fig), "write_image", lambda self, path, *a, **k: calls.append(path))
    written = analysis.export_figure(fig, tmp_path / "both")
    assert written["png"] == tmp_path / "both.png" and calls == [tmp_path / "both.png"]


def test_stream_eval_makes_late_fusion_streams_unimodal_baselines():
    from mbt_core.analysis.per_class_ap import per_class_table, stream_eval
    fusion = {"per_class_ap": {"a": 0.9, "b": 0.6}, "positive_rate": {"a": 0.5, "b": 0.5}}
    late = {"per_class_ap": {"a": 0.7, "b": 0.5}, "class_kinds": {"a": "audio"},
            "per_modality": {"spec": {"per_class_ap": {"a": 0.8, "b": 0.5}},
                             "rgb": {"per_class_ap": {"a": 0.5, "b": 0.55}}}}
    audio, visual = stream_eval(late, "spec"), stream_eval(late, "rgb")
    rows = {r["class"]: r for r in per_class_table(fusion, audio, visual)}
    assert rows["a"]["ap_audio"] == 0.8 and rows["b"]["ap_visual"] == 0.55
    assert rows["a"]["gain"] == pytest.approx(0.1) and rows["b"]["gain"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="flow"):
        stream_eval(late, "flow")
