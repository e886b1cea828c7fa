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

from mbt_core import suite
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
    "06_predict": ["report.html", "prediction.json", "clip_rgb_summed.png", "clip_spec.png",
                   "attention_layer3_rgb_CLS.png", "attention_layer3_fusion_token_1.png"],
}


def test_notebooks_committed_clean_with_one_parameters_cell():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        for parameter in ("output_dir", "quick", "data_dir", "sweep_dir", "workspace"):
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
    [page], digests = execute_notebooks(out, parameters, [name], progress=False)
    assert list(digests) == [name]
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


def test_predict_notebook_with_an_official_checkpoint_and_a_clip_without_audio(tmp_path):
    """Notebook 06 with its parameters: an official-format checkpoint written here, AudioSet's real class list."""
    import media
    import numpy as np
    from mbt_core import MBTConfig
    from official_checkpoint import random_params, released_names, write_official
    from shared import shared_path

    labels = shared_path("real_annotations", "audioset", "class_labels_indices.csv")
    config = MBTConfig.preset("micro", num_classes=527, spec_channels=3)
    checkpoint = write_official(tmp_path / "checkpoint_100", random_params(config), rename=released_names)
    clip = media.write_video(tmp_path / "silent.mp4", media.index_frames(30, 24, 32))
    out = tmp_path / "out"
    [page], _ = execute_notebooks(out, {"checkpoint": str(checkpoint), "video": str(clip), "top_k": 3, "quick": True,
                                     "labels": [str(labels)], "overrides": {"fusion_layer": 1}},
                               ["06_predict"], progress=False)
    result = json.loads((out / "06_predict" / "prediction.json").read_text())
    assert set(result["top"]) == {"fused", "rgb"} and result["missing"] == ["spec"]
    assert len(result["top"]["fused"]["class"]) == 3
    assert "no audio track" in page.read_text() and (out / "06_predict" / "report.html").exists()
    assert (out / "06_predict" / "attention_layer2_rgb_CLS.png").exists()
    assert not (out / "06_predict" / "attention_layer2_fusion_token_1.png").exists()  # one modality: no fusion


def test_mbt_predict_on_a_run_directory_names_the_card_classes(quick_suite, capsys):
    from mbt_core.cli import main
    from mbt_core.datasets import read_card
    from mbt_core.predict import run_clip
    from mbt_core.suite import suite_runs

    root, parameters = quick_suite
    run_dir = suite_runs(parameters["sweep_dir"])["mbt"]
    main(["predict", str(run_dir), str(run_clip(run_dir)), "--top-k", "2"])
    text = capsys.readouterr().out
    classes = read_card(Path(parameters["data_dir"]) / "data_card.md")["classes"]
    printed = [line.split("  ", 2)[-1] for line in text.splitlines() if line.startswith("  1. ")]
    assert len(printed) == 3 and all(name in classes for name in printed)
    assert f"class names: {(Path(parameters['data_dir']) / 'data_card.md').resolve()} (data card)" in text


def test_suite_rerun_with_unchanged_inputs_executes_nothing_and_keeps_its_history(quick_suite, tmp_path, monkeypatch):
    """`mbt suite` into a workspace holding the quick data and sweep: the first run executes the notebook, a
    second one with nothing changed executes none, and suite.json / index.html keep both runs."""
    root, _ = quick_suite
    workspace = tmp_path / "workspace"
    shutil.copytree(root / "data", workspace / "data")
    shutil.copytree(root / "sweep", workspace / "sweep")
    monkeypatch.setattr(suite, "NOTEBOOKS", ("01_tokenisation",))
    index = suite.run_suite(workspace, quick=True, progress=False)
    page = workspace / "notebooks" / "01_tokenisation.html"
    first = page.stat().st_mtime_ns
    suite.run_suite(workspace, quick=True, progress=False)
    history = suite.read_suite_record(workspace)
    assert [r["executed"] for r in history] == [["01_tokenisation"], []]
    assert page.stat().st_mtime_ns == first
    assert index.read_text().count("none (inputs unchanged)") == 1 and "01 tokenisation" in index.read_text()
    rows = json.loads((workspace / "sweep" / "results.json").read_text())
    assert len(rows) == 3  # nothing was trained again: the copied sweep was complete


def test_notebook_inputs_digest_follows_results_and_parameters(quick_suite, tmp_path):
    root, parameters = quick_suite
    results = tmp_path / "results.json"
    results.write_text((Path(parameters["sweep_dir"]) / "results.json").read_text())
    source = NOTEBOOK_DIR / "02_training.ipynb"
    digest = suite.inputs_digest([source, results], parameters)
    assert suite.inputs_digest([source, results], dict(parameters)) == digest
    assert suite.inputs_digest([source, results], {**parameters, "quick": False}) != digest
    results.write_text(results.read_text().replace("bottleneck", "self_attention", 1))
    assert suite.inputs_digest([source, results], parameters) != digest


def test_workspace_inputs_reuse_the_suite_workspace(quick_suite, monkeypatch, tmp_path):
    root, parameters = quick_suite
    monkeypatch.setenv(suite.WORKSPACE_ENV, str(root))
    assert suite.default_workspace() == root and suite.default_workspace(quick=True) == root / "quick"
    assert suite.workspace_inputs(root, quick=True, progress=False) == (root / "data", root / "sweep")
    assert suite.workspace_inputs(None, sweep_dir=root / "sweep") == (None, root / "sweep")
    assert suite.workspace_inputs(tmp_path, data_dir=root / "data", sweep=False) == (root / "data", None)
    assert not (tmp_path / "data").exists()  # given data is never copied or regenerated


def test_settings_that_build_one_model_share_a_run(quick_suite, tmp_path):
    """Late fusion is one model for bottleneck and cross-attention (not for self-attention, which shares its
    weights across modalities); B changes nothing without fusion tokens. The sweep trains each model once and
    records every setting asked for."""
    import jax
    import numpy as np

    from mbt_core.config import MBTConfig
    from mbt_core.experiment import model_key, sweep
    from mbt_core.model.model import MBT, dummy_inputs
    from mbt_core.recipes import load_run_config

    micro = MBTConfig.preset("micro", num_classes=3)
    late = micro.num_layers
    x = dummy_inputs(micro, 2)
    x = {k: v + jax.random.normal(jax.random.PRNGKey(1), v.shape) for k, v in x.items()}

    def logits(**fields):  # every layer's tokens (the head starts at zero, so logits alone would all agree)
        model = MBT(micro.replace(**fields))
        _, state = model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False,
                               mutable=["intermediates"])
        return np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(state["intermediates"])])

    np.testing.assert_array_equal(logits(fusion="bottleneck", fusion_layer=late, num_bottlenecks=1),
                                  logits(fusion="cross_attention", fusion_layer=late, num_bottlenecks=4))
    assert not np.allclose(logits(fusion="bottleneck", fusion_layer=late),
                           logits(fusion="self_attention", fusion_layer=late))
    np.testing.assert_array_equal(logits(fusion="self_attention", fusion_layer=1, num_bottlenecks=1),
                                  logits(fusion="self_attention", fusion_layer=1, num_bottlenecks=4))

    root, parameters = quick_suite
    base = load_run_config("synthetic-tiny", ["model.preset='micro'", "train.steps=2", "train.batch_size=4",
                                              "train.checkpoint_every=2"]).replace(data={"dir": parameters["data_dir"]})
    settings = [("bottleneck", late, 1), ("cross_attention", late, 1), ("self_attention", late, 1),
                ("self_attention", 1, 4), ("self_attention", 1, 1)]
    rows = sweep(base, tmp_path / "sweep", settings, progress=False, parallel=2)
    assert [(r["fusion"], r["fusion_layer"], r["num_bottlenecks"]) for r in rows] == settings
    assert len({r["run_dir"] for r in rows}) == len({model_key(base.replace(model=dict(zip(
        ("fusion", "fusion_layer", "num_bottlenecks"), s)))) for s in settings}) == 3
    assert rows[0]["run_dir"] == rows[1]["run_dir"] and rows[3]["run_dir"] == rows[4]["run_dir"]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == [
        "bottleneck-lf2-b1", "self_attention-lf1-b4", "self_attention-lf2-b1"]


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
