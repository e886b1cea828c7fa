"""The main job, `mbt suite`: data, the sweep the explorer spans, evaluation, executed notebooks, an index.

A workspace is a folder holding `data/` (the synthetic benchmark) and `sweep/` (results.json and one run
per setting): `mbt suite --out DIR` fills DIR, and the notebooks' `workspace` parameter (default:
`$MBT_WORKSPACE`, else `~/mbt_suite`, the suite's own default) points them at one, so a notebook opened by
hand reuses the suite's data and runs. The `ensure_*` functions make what is missing and reuse what exists.
A re-run of the suite whose inputs (notebook sources, parameters, sweep results, data manifest, the code) did
not change executes no notebook again; `suite.json` keeps the record of every run.
"""
from __future__ import annotations

import datetime
import hashlib
import html
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from mbt_core.package_files import shipped_dir

NOTEBOOKS = ("01_tokenisation", "02_training", "03_per_class_ap", "04_attention_rollout", "05_fusion_explorer",
             "06_predict")
NOTEBOOK_DIR = shipped_dir("notebooks")
PATH_PARAMETERS = ("data_dir", "sweep_dir", "output_dir", "workspace")  # notebook parameters that name folders


WORKSPACE_ENV = "MBT_WORKSPACE"
SUITE_RECORD = "suite.json"


def default_workspace(quick: bool = False) -> Path:
    """The workspace `mbt suite` fills and notebooks read when given none: `$MBT_WORKSPACE`, else `~/mbt_suite`
    (its `quick/` subfolder for quick runs, which must not mix with the full data and sweep)."""
    root = Path(os.environ.get(WORKSPACE_ENV) or Path.home() / "mbt_suite")
    return root / "quick" if quick else root


def ensure_synthetic(data_dir: str | Path, quick: bool = False, seed: int = 11, num_clips: int | None = None,
                     progress: bool = True) -> Path:
    """A synthetic benchmark in `data_dir` (generated unless its manifest exists): 2000 clips, 48 when quick."""
    from mbt_core.datasets.synthetic import generate

    data_dir = Path(data_dir)
    if not (data_dir / "manifest.csv").exists():
        generate(data_dir, num_clips=num_clips or (48 if quick else 2000), seed=seed, progress=progress)
    return data_dir


def workspace_inputs(workspace: str | Path | None = None, data_dir: str | Path | None = None,
                     sweep_dir: str | Path | None = None, quick: bool = False, sweep: bool = True,
                     progress: bool = True) -> tuple[Path | None, Path | None]:
    """The data and sweep a notebook reads: those given, else the workspace's (`default_workspace` when None),
    made there only when missing; no sweep when `sweep` is False, no data when only a sweep is given."""
    root = Path(workspace) if workspace is not None else default_workspace(quick)
    if sweep_dir is not None and data_dir is None:
        return None, Path(sweep_dir)
    data = ensure_synthetic(data_dir or root / "data", quick, progress=progress)
    if not sweep:
        return data, None
    return data, Path(sweep_dir) if sweep_dir is not None else ensure_sweep(data, root / "sweep", quick, progress)


RECIPE = "synthetic-tiny"
MBT_LAYER, MBT_BOTTLENECKS = 1, 4  # the suite's MBT and vanilla-fusion runs fuse from layer 1, with B = 4


def quick_train(quick: bool) -> dict[str, int]:
    """TrainConfig fields of the suite's runs: a shorter schedule than the recipe's, seconds-long when quick."""
    if quick:
        return {"steps": 12, "batch_size": 8, "checkpoint_every": 12, "log_every": 2}
    return {"steps": 150, "checkpoint_every": 150}


FUSIONS, BOTTLENECKS = ("bottleneck", "self_attention", "cross_attention"), (1, 4, 16)  # what the explorer offers


def suite_settings(num_layers: int, quick: bool = False) -> list[tuple[str, int, int]]:
    """The grid the explorer spans: every fusion strategy at every L_f, bottlenecks with every B in
    `BOTTLENECKS` (late fusion, L_f = L, is trained once: `experiment.model_key`); when quick, bottleneck
    fusion at L_f = 1 and L and vanilla fusion at L_f = 1, with B = 4."""
    from mbt_core.experiment import grid

    if quick:
        return [("bottleneck", MBT_LAYER, MBT_BOTTLENECKS), ("bottleneck", num_layers, MBT_BOTTLENECKS),
                ("self_attention", MBT_LAYER, MBT_BOTTLENECKS)]
    return grid(FUSIONS, range(num_layers + 1), BOTTLENECKS)


def ensure_sweep(data_dir: str | Path, sweep_dir: str | Path, quick: bool = False, progress: bool = True,
                 complete: bool = False) -> Path:
    """The suite's sweep in `sweep_dir` (results.json), run unless it exists (with `complete`, every setting of
    `suite_settings` that is missing is trained; those already evaluated are not run again)."""
    from mbt_core.experiment import sweep
    from mbt_core.recipes import load_run_config

    sweep_dir = Path(sweep_dir)
    if complete or not (sweep_dir / "results.json").exists():
        base = load_run_config(RECIPE).replace(train=quick_train(quick), data={"dir": str(data_dir)})
        sweep(base, sweep_dir, suite_settings(base.model.num_layers, quick), progress=progress, parallel=2)
    return sweep_dir


def suite_runs(sweep_dir: str | Path) -> dict[str, Path]:
    """The run directories of MBT, vanilla fusion and late fusion in a sweep, found by the settings its
    results.json records: MBT and vanilla (self-attention) fusion at L_f = 1, late fusion at L_f = L, whose
    two streams are the audio-only and visual-only baselines."""
    from mbt_core.run_dir import read_results

    rows = read_results(sweep_dir)
    wanted = {"mbt": lambda r: r["fusion"] == "bottleneck" and r["fusion_layer"] == MBT_LAYER,
              "vanilla": lambda r: r["fusion"] == "self_attention" and r["fusion_layer"] == MBT_LAYER,
              "late": lambda r: r["fusion_layer"] == r["num_layers"]}
    runs = {}
    for name, test in wanted.items():
        found = sorted((r for r in rows if test(r) and r.get("run_dir")), key=lambda r: r["fusion"] != "bottleneck")
        if not found:
            raise ValueError(f"{sweep_dir}: the sweep has no {name} run (settings: "
                             f"{[(r['fusion'], r['fusion_layer'], r['num_bottlenecks']) for r in rows]})")
        runs[name] = Path(found[0]["run_dir"])
    return runs


def write_notebooks(out_dir: str | Path, force: bool = False) -> list[Path]:
    """Copy the shipped notebooks (clean, no outputs) into `out_dir`; an edited copy there is kept unless `force`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    sources = [NOTEBOOK_DIR / f"{name}.ipynb" for name in NOTEBOOKS]
    edited = [out_dir / s.name for s in sources
              if (out_dir / s.name).exists() and (out_dir / s.name).read_bytes() != s.read_bytes()]
    if edited and not force:
        raise ValueError(f"{', '.join(map(str, edited))} differ from the shipped notebooks and would be "
                         "overwritten; move them away or pass --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        (out_dir / source.name).write_bytes(source.read_bytes())
    return [out_dir / s.name for s in sources]


def inputs_digest(paths: Sequence[Path], parameters: dict) -> str:
    """SHA-256 of what executed notebooks depend on: the files `paths`, `parameters`, and every source file of
    `mbt_core` and `widgets` (the code the notebooks call; `widgets` lies beside `mbt_core`, installed or not)."""
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode())
    here = Path(__file__).resolve().parent
    code = [f for package in (here, here.parent / "widgets") for f in sorted(package.rglob("*.py"))]
    for file in [*paths, *code]:
        digest.update(file.name.encode() + b"\0" + (file.read_bytes() if file.is_file() else b"(missing)"))
    return digest.hexdigest()


def execute_notebooks(out_dir: str | Path, parameters: dict, names: Sequence[str] = NOTEBOOKS,
                      progress: bool = True, skip: dict[str, str] | None = None) -> tuple[list[Path], dict[str, str]]:
    """Execute the notebooks with papermill into `out_dir` and export each to HTML; the pages, and the input
    digest of each notebook executed. One whose digest equals `skip[name]` and whose page exists is kept as it is."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Paths relative to the notebooks' folder (papermill runs there): pages name no folder of this machine.
    relative = {k: os.path.relpath(v, out_dir) if k in PATH_PARAMETERS and v is not None else v
                for k, v in parameters.items()}
    shared = [Path(parameters[k]) / f for k, f in (("sweep_dir", "results.json"), ("data_dir", "manifest.csv"))
              if parameters.get(k)]
    written, digests = [], {}
    bar = tqdm(names, desc="notebooks", unit="notebook", disable=not progress, leave=None)
    for name in bar:
        bar.set_postfix_str(name, refresh=True)
        source, target, page = NOTEBOOK_DIR / f"{name}.ipynb", out_dir / f"{name}.ipynb", out_dir / f"{name}.html"
        digest = inputs_digest([source, *shared], {**parameters, "name": name})
        if (skip or {}).get(name) != digest or not page.is_file() or not target.is_file():
            digests[name] = digest
            # IPC transport: kernel and client share this machine, so nothing listens on TCP (ipykernel warns
            # when it runs over TCP without encryption). No stored widget state: the page then shows each
            # widget's kernel-free text/html stand-in instead of a widget renderer loaded from a CDN.
            papermill.execute_notebook(str(source), str(target), parameters={**relative, "output_dir": name},
                                       progress_bar=False, cwd=str(out_dir), store_widget_state=False,
                                       config=Config({"KernelManager": {"transport": "ipc"}}))
            body, _ = HTMLExporter().from_notebook_node(nbformat.read(target, as_version=4))
            page.write_text(body, encoding="utf-8")
        written.append(page)
    return written, digests


def read_suite_record(out_dir: str | Path) -> list[dict[str, Any]]:
    """The record of every `mbt suite` run into `out_dir` (`suite.json`), oldest first; empty when none."""
    file = Path(out_dir) / SUITE_RECORD
    if not file.is_file():
        return []
    try:
        runs = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(runs, list):
        raise ValueError(f"{file}: expected a list of runs")
    return runs


def write_index(out_dir: str | Path, pages: Sequence[Path], summary: dict,
                history: Sequence[dict[str, Any]] = ()) -> Path:
    """`index.html` linking every exported notebook, with the suite's headline numbers and its runs so far."""
    out_dir = Path(out_dir)
    items = "\n".join(f'<li><a href="{html.escape(p.relative_to(out_dir).as_posix())}">'
                      f"{html.escape(p.stem.replace('_', ' '))}</a></li>" for p in pages)
    rows = "\n".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    past = "\n".join(f"<tr><td>{html.escape(str(r.get('started', '')))}</td><td>{html.escape(str(r.get('wall_s', '')))}"
                     f"</td><td>{html.escape(', '.join(r.get('executed', [])) or 'none (inputs unchanged)')}</td></tr>"
                     for r in history)
    runs = (f"<h2>Suite runs</h2><table border='1' cellpadding='4'><tr><th>started (UTC)</th><th>wall s</th>"
            f"<th>notebooks executed</th></tr>{past}</table>") if history else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>MBT suite</title></head><body>"
            f"<h1>Multimodal Bottleneck Transformer: the suite</h1><ol>{items}</ol>"
            f"<h2>Runs</h2><table border='1' cellpadding='4'>{rows}</table>{runs}</body></html>")
    (out_dir / "index.html").write_text(page, encoding="utf-8")
    return out_dir / "index.html"


def runs_summary(sweep_dir: str | Path) -> dict[str, str]:
    """One line per run of the sweep (setting -> mAP, per class kind), the notebooks' MBT, vanilla and late named."""
    from mbt_core.run_dir import read_eval, read_results

    roles = {path.resolve(): name for name, path in suite_runs(sweep_dir).items()}
    summary = {}
    for row in read_results(sweep_dir):
        report = read_eval(row["run_dir"])
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in report.get("mAP_by_kind", {}).items())
        role = roles.get(Path(row["run_dir"]).resolve())
        label = (f"{row['fusion'].replace('_', ' ')}, L_f = {row['fusion_layer']}, B = {row['num_bottlenecks']}"
                 + (f" ({role})" if role else ""))
        summary[label] = f"mAP {report['mAP']:.3f} ({kinds})"
    return summary


STAGES = ("data", "sweep", "notebooks", "index")
STAGE_SHARE = {"data": 0.15, "sweep": 0.55, "notebooks": 0.29, "index": 0.01}  # of a fresh run's time: the ETA


def run_suite(out_dir: str | Path | None = None, quick: bool = False, progress: bool = True) -> Path:
    """The whole story on the embedded default: data, the sweep, notebooks, `index.html`, in the workspace
    `out_dir` (default: `default_workspace`); a re-run skips what its unchanged inputs already made."""
    from mbt_core.atomic_files import write_text

    out = Path(out_dir if out_dir is not None else default_workspace(quick)).absolute()
    out.mkdir(parents=True, exist_ok=True)
    history = read_suite_record(out)
    last = next((r for r in reversed(history) if r.get("finished")), {})
    started, start = datetime.datetime.now(datetime.timezone.utc), time.monotonic()
    record: dict[str, Any] = {"started": started.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick}
    bar = tqdm(total=100, unit="%", disable=not progress, bar_format="{desc} |{bar}| [{elapsed}<{remaining}]")
    seconds = {}
    for i, stage in enumerate(STAGES, 1):
        bar.set_description_str(f"mbt suite {i}/{len(STAGES)}: {stage}", refresh=True)
        begin = time.monotonic()
        if stage == "data":
            data = ensure_synthetic(out / "data", quick, progress=progress)
        elif stage == "sweep":
            sweep_dir = ensure_sweep(data, out / "sweep", quick, progress, complete=True)
            suite_runs(sweep_dir)  # the notebooks' three runs exist, or a clear error now
        elif stage == "notebooks":
            params = {"quick": quick, "workspace": str(out), "data_dir": str(data), "sweep_dir": str(sweep_dir)}
            pages, digests = execute_notebooks(out / "notebooks", params, NOTEBOOKS, progress=progress,
                                               skip=last.get("notebook_digests"))
            record["notebook_digests"] = {**last.get("notebook_digests", {}), **digests}
            record["executed"] = list(digests)
        else:
            summary = runs_summary(sweep_dir)
            record["stage_s"] = {k: round(v, 1) for k, v in seconds.items()}
            record["wall_s"] = round(time.monotonic() - start, 1)
            summary["wall time"] = f"{record['wall_s']:.0f} s"
            record["finished"] = True
            write_text(out / SUITE_RECORD, json.dumps([*history, record], indent=2))
            index = write_index(out, pages, summary, [*history, record])
        seconds[stage] = time.monotonic() - begin
        bar.update(100 * STAGE_SHARE[stage])
        bar.write(f"mbt suite {i}/{len(STAGES)}: {stage} done in {seconds[stage]:.0f} s")
    bar.close()
    return index
