"""The main job, `mbt suite`: data, the runs a small sweep needs, evaluation, executed notebooks, an index.

The `ensure_*` functions are what notebooks call when no existing data, run or sweep is given: each
makes what is missing and reuses what exists, so every notebook runs on its own and a second run of
the suite resumes instead of starting over.
"""
from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from mbt_core.package_files import shipped_dir

NOTEBOOKS = ("01_tokenisation", "02_training", "03_per_class_ap", "04_attention_rollout", "05_fusion_explorer")
NOTEBOOK_DIR = shipped_dir("notebooks")
PATH_PARAMETERS = ("data_dir", "sweep_dir", "output_dir")  # notebook parameters that name folders


def ensure_synthetic(data_dir: str | Path, quick: bool = False, seed: int = 11, num_clips: int | None = None,
                     progress: bool = True) -> Path:
    """A synthetic benchmark in `data_dir` (generated unless its manifest exists): 2000 clips, 48 when quick."""
    from mbt_core.datasets.synthetic import generate

    data_dir = Path(data_dir)
    if not (data_dir / "manifest.csv").exists():
        generate(data_dir, num_clips=num_clips or (48 if quick else 2000), seed=seed, progress=progress)
    return data_dir


RECIPE = "synthetic-tiny"
MBT_LAYER, MBT_BOTTLENECKS = 1, 4  # the suite's MBT and vanilla-fusion runs fuse from layer 1, with B = 4


def quick_train(quick: bool) -> dict[str, int]:
    """TrainConfig fields of the suite's runs: a shorter schedule than the recipe's, seconds-long when quick."""
    if quick:
        return {"steps": 12, "batch_size": 8, "checkpoint_every": 12, "log_every": 2}
    return {"steps": 300, "checkpoint_every": 100}


def suite_settings(num_layers: int, quick: bool = False) -> list[tuple[str, int, int]]:
    """The sweep the notebooks need: bottleneck fusion over every L_f (L_f = 1 and late fusion when quick),
    and vanilla fusion at L_f = 1."""
    layers = [MBT_LAYER, num_layers] if quick else list(range(num_layers + 1))
    return ([("bottleneck", lf, MBT_BOTTLENECKS) for lf in layers]
            + [("self_attention", MBT_LAYER, MBT_BOTTLENECKS)])


def ensure_sweep(data_dir: str | Path, sweep_dir: str | Path, quick: bool = False, progress: bool = True) -> Path:
    """The suite's sweep in `sweep_dir` (results.json); settings already evaluated are not run again."""
    from mbt_core.experiment import sweep
    from mbt_core.recipes import load_run_config

    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "results.json").exists():
        base = load_run_config(RECIPE).replace(train=quick_train(quick), data={"dir": str(data_dir)})
        sweep(base, sweep_dir, suite_settings(base.model.num_layers, quick), progress=progress)
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


def execute_notebooks(out_dir: str | Path, parameters: dict, names: Sequence[str] = NOTEBOOKS,
                      progress: bool = True) -> list[Path]:
    """Execute the notebooks with papermill into `out_dir` and export each to HTML."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Paths relative to the notebooks' folder (papermill runs there): pages name no folder of this machine.
    relative = {k: os.path.relpath(v, out_dir) if k in PATH_PARAMETERS and v is not None else v
                for k, v in parameters.items()}
    written = []
    for name in tqdm(names, desc="notebooks", disable=not progress):
        target = out_dir / f"{name}.ipynb"
        # IPC transport: kernel and client share this machine, so nothing listens on TCP (ipykernel warns when
        # it runs over TCP without encryption). No stored widget state: the page then shows each widget's
        # kernel-free text/html stand-in instead of a widget renderer loaded from a CDN.
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(target),
                                   parameters={**relative, "output_dir": name},
                                   progress_bar=False, cwd=str(out_dir), store_widget_state=False,
                                   config=Config({"KernelManager": {"transport": "ipc"}}))
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(target, as_version=4))
        (out_dir / f"{name}.html").write_text(body, encoding="utf-8")
        written.append(out_dir / f"{name}.html")
    return written


def write_index(out_dir: str | Path, pages: Sequence[Path], summary: dict) -> Path:
    """`index.html` linking every exported notebook, with the suite's headline numbers."""
    out_dir = Path(out_dir)
    items = "\n".join(f'<li><a href="{html.escape(p.relative_to(out_dir).as_posix())}">'
                      f"{html.escape(p.stem.replace('_', ' '))}</a></li>" for p in pages)
    rows = "\n".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>MBT suite</title></head><body>"
            f"<h1>Multimodal Bottleneck Transformer: the suite</h1><ol>{items}</ol>"
            f"<h2>Runs</h2><table border='1' cellpadding='4'>{rows}</table></body></html>")
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


def run_suite(out_dir: str | Path = "mbt_suite", quick: bool = False, progress: bool = True) -> Path:
    """The whole story on the embedded default: data, runs, sweep, notebooks, `index.html`."""
    out = Path(out_dir).absolute()
    start = time.monotonic()
    data = ensure_synthetic(out / "data", quick, progress=progress)
    sweep_dir = ensure_sweep(data, out / "sweep", quick, progress)
    suite_runs(sweep_dir)  # the notebooks' three runs exist, or a clear error now
    params = {"quick": quick, "data_dir": str(data), "sweep_dir": str(sweep_dir)}
    pages = execute_notebooks(out / "notebooks", params, progress=progress)
    summary = runs_summary(sweep_dir)
    summary["wall time"] = f"{time.monotonic() - start:.0f} s"
    return write_index(out, pages, summary)
