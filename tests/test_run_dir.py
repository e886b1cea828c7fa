"""Typed run configuration (overrides checked against the dataclass fields) and the run-directory format:
what is written is what is read back, and folders moved elsewhere still open."""
import json
import shutil

import numpy as np
import pytest

from mbt_core import run_dir
from mbt_core.cli import main
from mbt_core.recipes import RunConfig, load_run_config, parse_override


@pytest.mark.parametrize("override, message", [
    ("model.hidden_size='64'", "model.hidden_size: expected int, got '64'"),
    ("train.steps=abc", "train.steps: expected int, got abc"),
    ("train.learning_rate=fast", "train.learning_rate: expected float, got fast"),
    ("train.spec_augment=1", "train.spec_augment: expected bool, got 1"),
    ("model.modalities=rgb", r"model.modalities: expected tuple\[str, \.\.\.\], got rgb"),
    ("train.steps=-5", "train.steps: must be >= 1, got -5"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("train.momentum=1.5", r"train.momentum: must lie in \[0, 1\), got 1.5"),
    ("train.optimizer=lion", "train.optimizer: 'lion' is not one of"),
    ("data.on_error=ignore", "data.on_error: 'ignore' is not one of"),
    ("data.workers=-1", "data.workers: must be >= 0, got -1"),
    ("model.fusion_layer=9", "fusion_layer"),
    ("train.stepz=3", r"train has no field\(s\) \['stepz'\]"),
])
def test_a_bad_override_names_key_type_and_value(override, message):
    with pytest.raises(ValueError, match=message):
        load_run_config("synthetic-tiny", [override])


def test_overrides_are_parsed_by_the_field_type():
    assert parse_override("data.dir=2024") == ("data", "dir", "2024")  # a folder named 2024 stays text
    assert parse_override("data.dir='my data'") == ("data", "dir", "my data")
    assert parse_override("train.learning_rate=1") == ("train", "learning_rate", 1.0)
    assert parse_override("train.grad_clip_norm=None") == ("train", "grad_clip_norm", None)
    assert parse_override("train.frame_augment=false") == ("train", "frame_augment", False)
    assert parse_override("model.modalities=('rgb',)") == ("model", "modalities", ("rgb",))
    run = load_run_config("synthetic-tiny", ["model.num_classes={'verb': 3, 'noun': 4}", "train.steps=7"])
    assert run.model.heads == {"verb": 3, "noun": 4} and run.train.steps == 7
    assert RunConfig.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    with pytest.raises(ValueError, match="train.steps: expected int, got '7'"):
        RunConfig.from_dict({**run.to_dict(), "train": {"steps": "7"}})  # a JSON file is checked the same way


def test_code_changes_configs_with_replace():
    run = load_run_config("synthetic-tiny")
    changed = run.replace(model={"fusion_layer": 2}, train={"steps": 5}, data={"dir": "2024"})
    assert (changed.model.fusion_layer, changed.train.steps, changed.data.dir) == (2, 5, "2024")
    with pytest.raises(ValueError, match="train.steps: must be >= 1"):
        run.replace(train={"steps": 0})


@pytest.mark.parametrize("argv, message", [
    (["train.steps=-5"], "mbt train: train.steps: must be >= 1, got -5"),
    (["model.hidden_size='64'"], "mbt train: model.hidden_size: expected int, got '64'"),
])
def test_cli_reports_a_bad_config_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", "synthetic-tiny", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"),
              *argv])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "r").exists()


def test_validation_runs_every_eval_every_steps_and_at_the_end_never_with_zero(tmp_path):
    from mbt_core.data.pipeline import TrainIterator
    from mbt_core.train.loop import TrainData, train_and_evaluate
    from test_train import micro_run, mock_split

    for every, want in ((0, []), (2, [2, 3])):
        run = micro_run(steps=3, eval_every=every, checkpoint_every=3)
        split, labels, _ = mock_split(run.model)
        seen = []
        validate = lambda params: seen.append(len(seen) + 1) or {"mAP": 0.5}
        out = tmp_path / f"every{every}"
        train_and_evaluate(run, out, TrainData(TrainIterator(split, labels, run), "multi_label", 4, validate),
                           progress=False)
        logged = [r["step"] for r in run_dir.read_metrics(out) if "val_mAP" in r]
        assert logged == want and len(seen) == len(want)
        assert (out / "best.json").exists() == bool(want)


def test_data_dir_is_stored_relative_and_a_moved_folder_opens(tmp_path):
    root = tmp_path / "suite"
    (root / "data").mkdir(parents=True)
    run = load_run_config("synthetic-tiny").replace(data={"dir": str(root / "data")})
    run_dir.write_config(root / "sweep" / "a", run)
    stored = json.loads((root / "sweep" / "a" / "config.json").read_text())
    assert stored["data"]["dir"] == "../../data"
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    assert run_dir.read_config(moved / "sweep" / "a").data.dir == str(moved / "sweep" / "a" / "../../data")
    assert run_dir.read_config(moved / "sweep" / "a" / "config.json").model == run.model
    # A run directory moved on its own still finds the data where it was, if it is still there.
    (root / "data").mkdir(parents=True)
    alone = tmp_path / "alone"
    shutil.move(moved / "sweep" / "a", alone)
    assert run_dir.read_config(alone).data.dir == str(root / "data")
    # Nothing in common but the filesystem's root: kept absolute.
    far = load_run_config("synthetic-tiny").replace(data={"dir": "/mbt-nowhere/data"})
    run_dir.write_config(tmp_path / "far", far)
    assert json.loads((tmp_path / "far" / "config.json").read_text())["data"]["dir"] == "/mbt-nowhere/data"


def test_evaluation_files_round_trip(tmp_path):
    classes, kinds = ["a", "b"], {"a": "audio", "b": "visual"}
    report = {"mAP": 0.5, "per_class_ap": {"a": 0.25, "b": 0.75}, "positive_rate": {"a": 0.5, "b": 0.1},
              "per_modality": {"spec": {"per_class_ap": {"a": 0.2, "b": None}}}}
    logits = {"fused": np.arange(4.0).reshape(2, 2), "spec": np.ones((2, 2))}
    targets = np.eye(2, dtype=np.float32)
    run_dir.write_evaluation(tmp_path, report, clip_ids=["x", "y"], targets=targets, classes=classes,
                             logits=logits, kinds=kinds)
    loaded = run_dir.read_eval(tmp_path)
    assert loaded["class_kinds"] == kinds and loaded["per_class_ap"] == report["per_class_ap"]
    rows = run_dir.read_per_class_ap(tmp_path)
    assert [(r["class"], r["kind"], float(r["ap"]), r["ap_spec"]) for r in rows] == [
        ("a", "audio", 0.25, "0.2"), ("b", "visual", 0.75, "")]
    scores = run_dir.read_scores(tmp_path)
    assert list(scores["clip_ids"]) == ["x", "y"] and list(scores["classes"]) == classes
    np.testing.assert_array_equal(scores["logits"]["fused"], logits["fused"])
    np.testing.assert_array_equal(scores["targets"], targets)


def test_metrics_log_appends_and_trims(tmp_path):
    with run_dir.MetricsLog(tmp_path) as log:
        for step in (1, 2, 3):
            log.append({"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in run_dir.read_metrics(tmp_path)] == [1, 2, 3]
    run_dir.trim_metrics(tmp_path, 2)
    assert [r["step"] for r in run_dir.read_metrics(tmp_path)] == [1, 2]
    assert run_dir.read_metrics(tmp_path / "none") == []


def test_results_store_settings_as_data_and_run_dirs_relative(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "any-name").mkdir(parents=True)
    row = {"fusion": "bottleneck", "fusion_layer": 1, "num_bottlenecks": 4, "num_layers": 3, "mAP": 0.5,
           "run_dir": str(sweep / "any-name")}
    run_dir.write_results(sweep, [row])
    assert json.loads((sweep / "results.json").read_text())[0]["run_dir"] == "any-name"
    assert (sweep / "results.csv").read_text().splitlines()[0].startswith("fusion,fusion_layer")
    shutil.move(sweep, tmp_path / "zipped-and-back")
    [loaded] = run_dir.read_results(tmp_path / "zipped-and-back")
    assert loaded == {**row, "run_dir": str(tmp_path / "zipped-and-back" / "any-name")}
