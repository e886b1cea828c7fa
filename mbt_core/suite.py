"""The main job, `mbt suite`: data, the runs a small sweep needs, evaluation, executed notebooks, an index.

The `ensure_*` functions are what notebooks call when no existing data, run or sweep is given: each
makes what is missing and reuses what exists, so every notebook runs on its own and a second run of
the suite resumes instead of starting over.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

NOTEBOOKS = ("01_tokenisation", "02_training", "03_per_class_ap", "04_attention_rollout", "05_fusion_explorer")
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def ensure_synthetic(data_dir: str | Path, quick: bool = False, seed: int = 11, num_clips: int | None = None,
                     progress: bool = True) -> Path:
    """A synthetic benchmark in `data_dir` (generated unless its manifest exists): 2000 clips, 48 when quick."""
    from mbt_core.datasets.synthetic import generate

    data_dir = Path(data_dir)
    if not (data_dir / "manifest.csv").exists():
        generate(data_dir, num_clips=num_clips or (48 if quick else 2000), seed=seed)
    return data_dir


def quick_overrides(quick: bool) -> list[str]:
    """Overrides that shrink a run to seconds for smoke tests and quick notebook runs."""
    return ["train.steps=12", "train.batch_size=8", "train.checkpoint_every=12", "train.log_every=2",
            "train.eval_views=1"] if quick else []


def ensure_run(data_dir: str | Path, run_dir: str | Path, overrides: Sequence[str] = (), quick: bool = False,
               recipe: str = "synthetic-tiny", split: str = "test", progress: bool = True) -> Path:
    """A trained and evaluated run in `run_dir` (trained or evaluated only where that is missing)."""
    from mbt_core.experiment import evaluate_run, train_run
    from mbt_core.recipes import load_run_config

    run_dir = Path(run_dir)
    if not (run_dir / "eval.json").exists():
        run = load_run_config(recipe, [f"data.dir={Path(data_dir)}", *quick_overrides(quick), *overrides])
        train_run(run, run_dir, progress=progress)
        evaluate_run(run_dir, split, progress=progress)
    return run_dir


SUITE_RUNS = {  # name -> overrides: what the notebooks compare
    "mbt": ["model.fusion=bottleneck", "model.fusion_layer=1"],
    "vanilla": ["model.fusion=self_attention", "model.fusion_layer=1"],
    "late": ["model.fusion=bottleneck", "model.fusion_layer=3"],
    "audio_only": ["model.modalities=('spec',)", "model.fusion_layer=3"],
    "visual_only": ["model.modalities=('rgb',)", "model.fusion_layer=3"],
}


def ensure_suite_runs(data_dir: str | Path, runs_dir: str | Path, quick: bool = False,
                      progress: bool = True) -> dict[str, Path]:
    """The runs the notebooks show: MBT, vanilla fusion, late fusion, audio-only, visual-only."""
    runs_dir = Path(runs_dir)
    return {name: ensure_run(data_dir, runs_dir / name, overrides, quick, progress=progress)
            for name, overrides in tqdm(SUITE_RUNS.items(), desc="runs", disable=not progress)}


def ensure_sweep(data_dir: str | Path, sweep_dir: str | Path, quick: bool = False, progress: bool = True) -> Path:
    """A small fusion x L_f grid (results.json) for the explorer; the sweep resumes finished settings."""
    from mbt_core.experiment import sweep

    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "results.json").exists():
        layers = [1, 3] if quick else [0, 1, 2, 3]
        sweep("synthetic-tiny", data_dir, sweep_dir, ["bottleneck", "self_attention"], layers, [4],
              quick_overrides(quick), progress=progress)
    return sweep_dir


def execute_notebooks(out_dir: str | Path, parameters: dict, names: Sequence[str] = NOTEBOOKS,
                      progress: bool = True) -> list[Path]:
    """Execute the notebooks with papermill into `out_dir` and export each to HTML."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in tqdm(names, desc="notebooks", disable=not progress):
        target = out_dir / f"{name}.ipynb"
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(target),
                                   parameters={**parameters, "output_dir": str(out_dir / name)},
                                   progress_bar=False, cwd=str(out_dir))
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


def run_suite(out_dir: str | Path = "mbt_suite", quick: bool = False, progress: bool = True) -> Path:
    """The whole story on the embedded default: data, runs, sweep, notebooks, `index.html`."""
    out = Path(out_dir).absolute()
    start = time.monotonic()
    data = ensure_synthetic(out / "data", quick, progress=progress)
    runs = ensure_suite_runs(data, out / "runs", quick, progress)
    sweep_dir = ensure_sweep(data, out / "sweep", quick, progress)
    params = {"quick": quick, "data_dir": str(data), "runs_dir": str(out / "runs"), "sweep_dir": str(sweep_dir)}
    pages = execute_notebooks(out / "notebooks", params, progress=progress)
    summary = {}
    for name, run_dir in runs.items():
        report = json.loads((run_dir / "eval.json").read_text())
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in report.get("mAP_by_kind", {}).items())
        summary[name] = f"mAP {report['mAP']:.3f} ({kinds})"
    summary["wall time"] = f"{time.monotonic() - start:.0f} s"
    return write_index(out, pages, summary)
