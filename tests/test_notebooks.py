"""Notebooks: committed clean with one `parameters` cell; each executes with papermill on quick=True.

One small synthetic set and one quick sweep (MBT, vanilla and late fusion) are made once per session
and shared by every notebook, as `mbt suite` shares them.
"""
import html
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from mbt_core.suite import (NOTEBOOK_DIR, NOTEBOOKS, ensure_sweep, ensure_synthetic, execute_notebooks,
                            runs_summary, write_index)

# What each notebook must leave in its output_dir.
EXPECTED = {
    "01_tokenisation": ["frames_patches.png", "spectrogram_patches.png"],
    "02_training": ["training_curves.html", "summary.json"],
    "03_per_class_ap": ["per_class_table.json", "top_classes.html", "fusion_gain.html"],
    "04_attention_rollout": ["side_by_side_rgb.png", "side_by_side_spec.png", "tightness.json",
                             "mbt_clip0_rgb_summed.png", "mbt_clip0_rgb_frames.mp4"],
    "05_fusion_explorer": ["fusion_explorer.html"],
}


def test_notebooks_committed_clean_with_one_parameters_cell():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        for parameter in ("output_dir", "quick", "data_dir", "sweep_dir"):
            assert f"{parameter} = " in tagged[0].source, (name, parameter)
        assert "google.colab" in code[0].source  # the first cell installs the project on Colab


@pytest.fixture(scope="session")
def quick_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    data = ensure_synthetic(root / "data", quick=True, progress=False)
    sweep_dir = ensure_sweep(data, root / "sweep", quick=True, progress=False)
    return root, {"quick": True, "data_dir": str(data), "sweep_dir": str(sweep_dir)}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_on_quick(quick_suite, name, capfd):
    root, parameters = quick_suite
    out = root / "notebooks"
    [page] = execute_notebooks(out, parameters, [name], progress=False)
    assert page.exists() and page.stat().st_size > 0
    assert "without encryption" not in capfd.readouterr().err  # the kernel runs over IPC, so it has nothing to warn
    text = page.read_text()
    # The page names no folder of this machine, prints no dict dump or PNG excuse, loads no widget renderer: each
    # live widget is replaced by its kernel-free stand-in.
    assert str(root) not in text and "kaleido" not in text and "PosixPath" not in text
    assert "widget-state+json" not in text and "html-manager" not in text  # no widget renderer from a CDN
    if name == "05_fusion_explorer":
        assert "The live fusion explorer needs a running kernel" in text and 'class="frame"' in text
    for file in EXPECTED[name]:
        assert (out / name / file).exists(), f"{name} did not write {file}"
    executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    shown = [o["data"].get("text/html", o["data"].get("text/plain", "")) for c in executed.cells
             for o in c.get("outputs", []) if "data" in o and not set(o["data"]) & {"image/png", "text/html"}]
    assert not [t for t in shown if t.strip()[:1] in ("{", "[") or "object>" in t], shown  # no dict dumps or bare reprs


def test_quick_outputs_are_consistent(quick_suite):
    root, parameters = quick_suite
    rows = json.loads((Path(parameters["sweep_dir"]) / "results.json").read_text())
    assert {(r["fusion"], r["fusion_layer"]) for r in rows} == {("bottleneck", 1), ("bottleneck", 3),
                                                                ("self_attention", 1)}
    summary = runs_summary(parameters["sweep_dir"])  # the index lists every run of the sweep
    assert len(summary) == len(rows) and "bottleneck, L_f = 1, B = 4 (mbt)" in summary
    assert summary["self attention, L_f = 1, B = 4 (vanilla)"] == f"mAP {rows[2]['mAP']:.3f} (" + ", ".join(
        f"{k[4:]} {v:.3f}" for k, v in rows[2].items() if k.startswith("mAP_")) + ")"
    index = write_index(root, sorted((root / "notebooks").glob("*.html")), summary)
    text = index.read_text()
    assert all(f"{name}.html" in text for name in NOTEBOOKS if (root / "notebooks" / f"{name}.html").exists())
    assert all(html.escape(label) in text for label in summary)


def test_a_moved_suite_opens_in_the_notebooks_and_widgets(quick_suite, tmp_path):
    """The whole suite folder copied elsewhere, the original hidden: runs, data and sweep still open."""
    from mbt_core.analysis.run_report import eval_summary, training_curves
    from mbt_core.experiment import load_run_split
    from mbt_core.run_dir import read_eval
    from mbt_core.suite import suite_runs
    from widgets.fusion_explorer import FusionExplorer
    from widgets.rollout_stepper import RolloutStepper
    from widgets.static_export import explorer_html

    root, _ = quick_suite
    moved = tmp_path / "unzipped" / "suite"
    shutil.copytree(root / "data", moved / "data")
    shutil.copytree(root / "sweep", moved / "sweep")
    hidden = root.with_name(root.name + "-hidden")
    root.rename(hidden)
    try:
        runs = suite_runs(moved / "sweep")
        assert set(runs) == {"mbt", "vanilla", "late"} and all(moved in p.parents for p in runs.values())
        assert read_eval(runs["late"])["mAP"] == pytest.approx(eval_summary(runs)[2]["mAP"], abs=1e-4)
        assert len(training_curves(runs).data) >= 3
        run, params, cached = load_run_split(runs["mbt"])
        assert moved in Path(run.data.dir).resolve().parents or Path(run.data.dir).resolve() == (moved / "data")
        assert len(cached) > 0
        explorer = FusionExplorer(results=moved / "sweep")
        assert explorer.config.num_layers == run.model.num_layers and explorer.state["mAP"] is not None
        RolloutStepper.from_run(runs["mbt"], 0)
        assert explorer_html(None, moved / "sweep", tmp_path / "explorer.html").stat().st_size > 0
    finally:
        hidden.rename(root)


def test_the_explorer_trains_a_missing_setting_into_the_sweep(quick_suite, tmp_path):
    """The live explorer's button on a copy of the quick sweep: one more setting, trained as the sweep's runs."""
    from mbt_core.run_dir import read_config, read_results
    from widgets.fusion_explorer import FusionExplorer

    root, _ = quick_suite
    copy = tmp_path / "suite"
    shutil.copytree(root / "data", copy / "data")
    shutil.copytree(root / "sweep", copy / "sweep")
    ex = FusionExplorer(results=copy / "sweep")
    ex.fusion.value, ex.fusion_layer.value = "cross_attention", 1
    assert ex.state["mAP"] is None and ex.train_button.layout.display == "flex"
    ex.train_button.click()
    rows = read_results(copy / "sweep")
    assert len(rows) == 4 and ("cross_attention", 1, 4) in {(r["fusion"], r["fusion_layer"], r["num_bottlenecks"])
                                                            for r in rows}
    assert ex.state["mAP"] is not None and ex.train_button.layout.display == "none"
    trained, reference = read_config(copy / "sweep" / "cross_attention-lf1-b4"), read_config(rows[0]["run_dir"])
    assert trained.train == reference.train and trained.model.replace(fusion="bottleneck") == reference.model
