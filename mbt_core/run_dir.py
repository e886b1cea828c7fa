"""The run-directory format, written and read here only: config.json, metrics.jsonl, eval.json, scores.npz,
per_class_ap.csv, and a sweep's results.json / results.csv.

Paths are stored so that a folder can be moved or zipped and opened elsewhere: `data.dir` is kept relative
to the run directory when both lie under a common root (not the filesystem's root), with the absolute path
it had beside it as a fallback for a run directory moved on its own; a sweep's `run_dir`s are relative to
the sweep directory. A sweep row records its setting as data (fusion, L_f, B, L), never in a name to parse.

A run directory holds one run: training into it again resumes only with the configuration it was started
with (`check_resume`, before anything is written). Only fields that change no trained number may differ
(`MAY_DIFFER`: how often to log, checkpoint and validate, how many checkpoints to keep, evaluation views
and the cache switch; not the data-loading processes, whose number shapes the checkpointed iterator state);
`set_aside` moves a run's files into
`previous/<n>/` so that `mbt train --restart` starts over without deleting anything.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mbt_core.atomic_files import write_text
from mbt_core.recipes import RECIPES, RunConfig, load_run_config, resolve_run_config

CONFIG, METRICS, EVAL, SCORES, PER_CLASS_AP = "config.json", "metrics.jsonl", "eval.json", "scores.npz", "per_class_ap.csv"
RESULTS, RESULTS_CSV = "results.json", "results.csv"
_ABSOLUTE = "absolute_paths"  # config.json: where the relative paths pointed when it was written
RESULT_FIELDS = ("fusion", "fusion_layer", "num_bottlenecks", "num_layers", "mAP")  # every results.json row has them


def _relative_if_shared(path: Path, start: Path) -> str:
    """`path` relative to `start` when they share a root below the filesystem's, else absolute."""
    path, start = path.absolute(), start.absolute()
    common = Path(os.path.commonpath([path, start]))
    return os.path.relpath(path, start) if common != Path(common.anchor) else str(path)


def _read_json(path: str | Path, name: str, missing: str) -> tuple[Path, Any]:
    """The file (`path`, or `name` in the directory `path`) and its JSON; a missing or bad file is named."""
    path = Path(path)
    file = path / name if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: {missing}")
    try:
        return file, json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


# ----- config.json -----
def write_config(run_dir: str | Path, run: RunConfig) -> Path:
    """Write `config.json`: the resolved RunConfig, `data.dir` relative to the run directory where it can be."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tree = run.to_dict()
    if run.data.dir:
        data = Path(run.data.dir)
        tree["data"]["dir"] = _relative_if_shared(data, run_dir)
        tree[_ABSOLUTE] = {"data.dir": str(data.absolute())}
    return write_text(run_dir / CONFIG, json.dumps(tree, indent=2))


def read_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """A run's RunConfig (its directory or config.json), `data.dir` resolved, then dotted overrides applied.

    A relative `data.dir` is relative to the run directory; where nothing is there (the run directory was
    moved on its own), the absolute path recorded when it was written is used if it still exists.
    """
    file, tree = _read_json(path, CONFIG, "no run configuration (is this a run directory?)")
    if not isinstance(tree, dict):
        raise ValueError(f"{file}: expected a JSON object with model, train and data sections")
    written = tree.pop(_ABSOLUTE, {})
    data = dict(tree.get("data", {}))
    if data.get("dir") and not Path(data["dir"]).is_absolute():
        here, there = file.parent / data["dir"], written.get("data.dir")
        data["dir"] = str(Path(there) if not here.is_dir() and there and Path(there).is_dir() else here)
        tree["data"] = data
    return resolve_run_config(tree, overrides)


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> RunConfig:
    """A recipe name, or a run directory / JSON config file (paths resolved as `read_config` does), plus overrides."""
    if name_or_path in RECIPES or not Path(name_or_path).exists():
        return load_run_config(name_or_path, overrides)
    return read_config(name_or_path, overrides)


# ----- one run per directory -----
# Fields that change no trained number (parameters, data order, random streams): a resumed run may change them.
# Not data.workers: the data iterator's checkpointed state has one entry per worker process.
MAY_DIFFER = frozenset({"train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every",
                        "train.eval_views", "data.cache"})
PREVIOUS = "previous"  # where `set_aside` moves an earlier run's files
RUN_FILES = (CONFIG, METRICS, "checkpoints", "checkpoints.broken", "best", "best.json", EVAL, SCORES, PER_CLASS_AP)


class ConfigChangedError(ValueError):
    """Training into a run directory with a configuration other than the one it was started with."""


def _flat(run: RunConfig) -> dict[str, Any]:
    tree = run.to_dict()
    flat = {f"{section}.{key}": value for section, fields in tree.items() for key, value in fields.items()}
    if run.data.dir:
        flat["data.dir"] = str(Path(run.data.dir).absolute().resolve())
    return flat


def config_changes(run_dir: str | Path, run: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (recorded, new) for each field where `run` differs from the run directory's config.json."""
    if not (Path(run_dir) / CONFIG).is_file():
        return {}
    old, new = _flat(read_config(run_dir)), _flat(run)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def check_resume(run_dir: str | Path, run: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Refuse (ConfigChangedError naming each field) to train `run` into a directory started with another config.

    Returns the changes of fields in `MAY_DIFFER` (the resumed run takes the new values).
    """
    changes = config_changes(run_dir, run)
    refused = {k: v for k, v in changes.items() if k not in MAY_DIFFER}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigChangedError(f"{Path(run_dir) / CONFIG}: this run was started with another configuration "
                                 f"({listed}); train into a new directory, or pass --restart to start over "
                                 f"(the old run's files are moved to {Path(run_dir) / PREVIOUS}/<n>/)")
    return {k: v for k, v in changes.items() if k in MAY_DIFFER}


def set_aside(run_dir: str | Path) -> Path | None:
    """Move a run's files (config, metrics, checkpoints, evaluation) into `run_dir/previous/<n>/`; None if none."""
    run_dir = Path(run_dir)
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return None
    n = 1 + max((int(p.name) for p in (run_dir / PREVIOUS).glob("*") if p.name.isdigit()), default=0)
    target = run_dir / PREVIOUS / str(n)
    target.mkdir(parents=True)
    for name in present:
        os.replace(run_dir / name, target / name)
    return target


def writable_dir(path: str | Path, what: str) -> Path:
    """`path` as a directory this process can write into (made if missing); else an OSError naming `what`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise type(e)(f"{what} {path}: cannot write there ({e.strerror or e})") from None
    return path


# ----- metrics.jsonl -----
def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged steps of a run (`metrics.jsonl`); none when it has not logged yet.

    A last line cut short (the process died writing it) is left out; any other bad line is an error naming it.
    """
    path = Path(run_dir) / METRICS
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{path}, line {n}: not a JSON record ({e})") from None
    return records


def trim_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the lines logged after `step` (lost with the process when a run resumes from that checkpoint)."""
    path = Path(run_dir) / METRICS
    if path.exists():
        write_text(path, "".join(json.dumps(r) + "\n" for r in read_metrics(run_dir) if r.get("step", 0) <= step))


class MetricsLog:
    """`metrics.jsonl` open for appending: one JSON line per logged step, flushed as it is written."""

    def __init__(self, run_dir: str | Path):
        self._file = (Path(run_dir) / METRICS).open("a")

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one step's record."""
        self._file.write(json.dumps(dict(record)) + "\n")
        self._file.flush()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()


# ----- eval.json, scores.npz, per_class_ap.csv -----
def write_evaluation(run_dir: str | Path, report: Mapping[str, Any], *, clip_ids: Sequence[str], targets: np.ndarray,
                     classes: Sequence[str], logits: Mapping[str, np.ndarray], kinds: Mapping[str, str]) -> None:
    """Write `eval.json` (with the class kinds), per-clip `scores.npz` and `per_class_ap.csv`."""
    run_dir = Path(run_dir)
    report = {**report, "class_kinds": dict(kinds)}
    (run_dir / EVAL).write_text(json.dumps(report, indent=2))
    np.savez(run_dir / SCORES, clip_ids=np.asarray(clip_ids), targets=targets, classes=np.asarray(classes),
             **{f"logits_{k}": v for k, v in logits.items()})
    streams = report.get("per_modality", {})
    with open(run_dir / PER_CLASS_AP, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "kind", "ap", "positive_rate", *[f"ap_{m}" for m in streams]])
        for name in classes:
            writer.writerow([name, kinds.get(name, ""), report["per_class_ap"][name], report["positive_rate"][name],
                             *[p["per_class_ap"][name] for p in streams.values()]])


def read_eval(path: str | Path) -> dict[str, Any]:
    """A run's `eval.json` (a run directory or the file), with `class_kinds` (from `per_class_ap.csv` in older runs)."""
    file, report = _read_json(path, EVAL, "no eval.json (run `mbt evaluate` on the run first)")
    if not isinstance(report, dict) or not isinstance(report.get("per_class_ap"), dict):
        raise ValueError(f"{file}: an eval.json needs a `per_class_ap` mapping")
    table = file.parent / PER_CLASS_AP
    if "class_kinds" not in report and table.is_file():
        report["class_kinds"] = {row["class"]: row["kind"] for row in read_per_class_ap(file.parent) if row.get("kind")}
    return report


def read_per_class_ap(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a run's `per_class_ap.csv` (class, kind, ap, positive_rate, ap_<modality>...), as text."""
    with open(Path(run_dir) / PER_CLASS_AP, newline="") as f:
        return list(csv.DictReader(f))


def read_scores(run_dir: str | Path) -> dict[str, Any]:
    """A run's `scores.npz`: clip_ids, targets, classes and `logits[key]` (fused and each modality)."""
    with np.load(Path(run_dir) / SCORES, allow_pickle=False) as f:
        return {"clip_ids": f["clip_ids"], "targets": f["targets"], "classes": f["classes"],
                "logits": {k[len("logits_"):]: f[k] for k in f.files if k.startswith("logits_")}}


# ----- a sweep's results.json -----
def write_results(sweep_dir: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write `results.json` and `results.csv`; each row's `run_dir` is stored relative to the sweep directory."""
    sweep_dir = Path(sweep_dir)
    rows = [{**r, "run_dir": Path(os.path.relpath(Path(r["run_dir"]).absolute(), sweep_dir.absolute())).as_posix()}
            for r in rows]
    (sweep_dir / RESULTS).write_text(json.dumps(rows, indent=2))
    with open(sweep_dir / RESULTS_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    return sweep_dir / RESULTS


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a sweep's results.json (the file or its directory), checked, typed, `run_dir` resolved."""
    file, rows = _read_json(path, RESULTS, "no sweep results (expected the results.json written by `mbt sweep`)")
    if not isinstance(rows, list):
        raise ValueError(f"{file}: expected a list of rows, got {type(rows).__name__}")
    checked = []
    for i, row in enumerate(rows):
        missing = [k for k in RESULT_FIELDS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"{file} row {i}: missing field(s) {missing}")
        try:
            row = dict(row, fusion=str(row["fusion"]), fusion_layer=int(row["fusion_layer"]),
                       num_bottlenecks=int(row["num_bottlenecks"]), num_layers=int(row["num_layers"]),
                       mAP=float(row["mAP"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{file} row {i}: {e}") from None
        if row.get("run_dir"):
            row["run_dir"] = str(_locate_run(file.parent, Path(row["run_dir"])))
        checked.append(row)
    return checked


def _locate_run(sweep_dir: Path, recorded: Path) -> Path:
    """A recorded run directory: relative to the sweep; older sweeps' paths (absolute or relative to where
    they ran) are found beside results.json when they no longer exist."""
    candidate = recorded if recorded.is_absolute() else sweep_dir / recorded
    return candidate if candidate.is_dir() or not (sweep_dir / recorded.name).is_dir() else sweep_dir / recorded.name
