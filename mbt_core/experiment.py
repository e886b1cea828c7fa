"""Runs on a data directory: `train_run`, `evaluate_run` and `sweep` (the ablation grid of Fig. 3).

Each writes into its run directory (on several hosts, process 0 writes) and resumes: a finished run is not trained again, an interrupted
one continues from its latest checkpoint, and a run directory started with another configuration is
refused before any work (`run_dir.check_resume`; `restart=True` moves the old run aside first).
"""
from __future__ import annotations

import dataclasses
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from mbt_core.data.pipeline import TrainIterator, load_dataset, steps_per_epoch, tokenised_split
from mbt_core.model.flops import gflops
from mbt_core.model.vit_init import init_from_vit
from mbt_core.recipes import RunConfig
from mbt_core.run_dir import (check_resume, read_config, read_eval, set_aside, writable_dir, write_evaluation,
                              write_results)
from mbt_core.train.evaluate import accuracy_fields, evaluation_report, predict
from mbt_core.train.loop import TrainData, checkpoint_manager, init_state, restore, train_and_evaluate


def fit_classes(run: RunConfig, dataset: Any) -> RunConfig:
    """The run with the model's head sized to the dataset's classes, one head per card head for multi-head data
    (a recipe does not know the data)."""
    heads = dataset.head_sizes
    if heads and run.model.heads is None:
        return dataclasses.replace(run, model=run.model.replace(num_classes=heads))
    if heads and run.model.heads != heads:
        raise ValueError(f"model.num_classes {run.model.heads} does not match the data's heads {heads}")
    if run.model.heads is None and run.model.num_classes != len(dataset.classes):
        return dataclasses.replace(run, model=run.model.replace(num_classes=len(dataset.classes)))
    if run.model.total_classes != len(dataset.classes):
        raise ValueError(f"model.num_classes {run.model.num_classes} does not match the data's "
                         f"{len(dataset.classes)} classes")
    return run


def selection_metric(dataset: Any) -> str:
    """What validation ranks checkpoints by: action top-1 for EPIC's verb and noun heads (its card's metric), else mAP."""
    return "action_top1" if set(dataset.heads or ()) == {"verb", "noun"} else "mAP"


def check_batch_size(run: RunConfig, clips: int, what: str) -> None:
    """Refuse a batch larger than the training split: every batch would hold some clips twice."""
    if run.train.batch_size > clips:
        raise ValueError(f"train.batch_size {run.train.batch_size} is larger than the {clips} clips of {what}: "
                         f"every batch would repeat clips; choose train.batch_size <= {clips}")


def run_split(run: RunConfig, dataset: Any, split: str, views: int, progress: bool = True) -> Any:
    """One split of a run's data, tokenised as the run's data config says (bad clips, normalisation)."""
    return tokenised_split(dataset, split, run.model, views, progress, run.data.on_error, run.data.normalise_spec)


def validation(run: RunConfig, dataset: Any, progress: bool = True) -> Callable[[Any], dict]:
    """A function of the parameters giving the validation split's mAP, and the selection metric when it is
    another (one centred view per clip)."""
    val = run_split(run, dataset, run.data.val_split, 1, progress)
    targets = dataset.labels(run.data.val_split, val.index)
    keys = dict.fromkeys(["mAP", selection_metric(dataset)])

    def evaluate(params: Any) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # classes without positives are reported by `mbt evaluate`
            logits = predict(run.model, params, val, run.train.batch_size, run.model.modalities)
            report = evaluation_report({"fused": logits["fused"]}, targets, dataset.classes, dataset.label_type,
                                       heads=dataset.head_sizes)
        return {k: report[k] for k in keys}
    return evaluate


def train_data(run: RunConfig, dataset: Any, progress: bool = True) -> TrainData:
    """The training split of a run's data as the loop reads it (`data.train_windows` cached windows per clip, drawn
    at random), with validation when `train.eval_every` asks."""
    split = run_split(run, dataset, run.data.train_split, run.data.train_windows, progress)
    check_batch_size(run, len(split), f"split {run.data.train_split!r} (readable clips)")
    batches = TrainIterator(split, dataset.labels(run.data.train_split, split.index), run)
    return TrainData(batches, dataset.label_type, steps_per_epoch(len(split), run.train.batch_size),
                     validation(run, dataset, progress) if run.train.eval_every else None, selection_metric(dataset))


def train_run(run: RunConfig, out_dir: str | Path, progress: bool = True, restart: bool = False) -> RunConfig:
    """Train `run` on its data directory into `out_dir` (resuming when checkpoints of the same config exist;
    with `restart`, after moving an earlier run's files to `out_dir/previous/<n>/`); the run as trained."""
    dataset = load_dataset(run.data)
    run = fit_classes(run, dataset)
    if run.data.train_split in dataset.splits:
        check_batch_size(run, len(dataset.splits[run.data.train_split]), f"split {run.data.train_split!r}")
    writable_dir(out_dir, "run directory")
    if restart and jax.process_index() == 0 and (moved := set_aside(out_dir)) is not None:
        print(f"{out_dir}: the earlier run's files were moved to {moved}")
    if restart:
        multihost_utils.sync_global_devices("set_aside")  # every process sees the emptied directory
    check_resume(out_dir, run)  # here too: refused before tokenising
    data = train_data(run, dataset, progress)
    run = run.resolve_epochs(data.steps_per_epoch)
    params = None
    if run.train.init_checkpoint:
        state, _ = init_state(run, 1)
        params, report = init_from_vit(state.params, run.model, run.train.init_checkpoint,
                                       run.train.init_fusion_from_posemb)
        print(report)
    train_and_evaluate(run, out_dir, data, params=params, progress=progress)
    return run


def load_params(run_dir: str | Path, which: str = "latest") -> tuple[RunConfig, Any]:
    """A run's config and its latest (or best) parameters."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir}: " + ("not a directory" if run_dir.exists()
                                                                else "does not exist"))
    run = read_config(run_dir)
    template = jax.eval_shape(lambda: init_state(run, 1)[0])  # shapes only: no initialisation to pay for
    manager = checkpoint_manager(run_dir / ("best" if which == "best" else "checkpoints"), 1)
    restored = restore(manager, template)
    if restored is None:
        raise FileNotFoundError(f"{run_dir}: no {which} checkpoint to evaluate")
    return run, restored.params


def load_run_split(run_dir: str | Path, split: str = "test", which: str = "latest") -> tuple[RunConfig, Any, Any]:
    """A run's config, its latest (or best) parameters and one split of its data, tokenised (one view)."""
    run, params = load_params(run_dir, which)
    return run, params, run_split(run, load_dataset(run.data), split, 1, progress=False)


def evaluate_run(run_dir: str | Path, split: str = "test", which: str = "latest", progress: bool = True) -> dict:
    """Evaluate a run on a split; write `eval.json`, per-clip `scores.npz` and `per_class_ap.csv`."""
    run_dir = Path(run_dir)
    run, params = load_params(run_dir, which)
    writable_dir(run_dir, "run directory")
    dataset = load_dataset(run.data)
    cached = run_split(run, dataset, split, run.train.eval_views, progress)
    targets = dataset.labels(split, cached.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # excluded classes are reported in the file instead
        logits = predict(run.model, params, cached, run.train.batch_size)
        report = evaluation_report(logits, targets, dataset.classes, dataset.label_type, dataset.class_kinds(),
                                   dataset.head_sizes)
    report.update(split=split, checkpoint=which, views=run.train.eval_views, label_type=dataset.label_type)
    if jax.process_index() == 0:
        write_evaluation(run_dir, report, clip_ids=cached.clip_ids, targets=targets, classes=dataset.classes,
                         logits=logits, kinds=dataset.class_kinds())
    return report


def variant_name(fusion: str, fusion_layer: int, bottlenecks: int) -> str:
    """Directory name of one sweep setting."""
    return f"{fusion}-lf{fusion_layer}-b{bottlenecks}"


def grid(fusions: Sequence[str], fusion_layers: Sequence[int], bottlenecks: Sequence[int]) -> list[tuple[str, int, int]]:
    """Settings of a fusion x L_f x B grid; B varies only for bottleneck fusion (it means nothing elsewhere)."""
    return [(f, lf, b) for f in fusions for lf in fusion_layers for b in (bottlenecks if f == "bottleneck" else bottlenecks[:1])]


def model_key(run: RunConfig) -> tuple:
    """What tells two sweep settings' models apart: without a fused layer (L_f = L) bottleneck and cross-attention
    fusion are the same late fusion (self-attention fusion still shares its weights across modalities), and
    without fusion tokens B changes nothing, so such settings share one run."""
    m = run.model
    if not m.fused_layers:
        return ("late", m.fusion_layer, m.fusion == "self_attention")
    return (m.fusion, m.fusion_layer, m.num_bottlenecks) if m.has_fusion_tokens else (m.fusion, m.fusion_layer)


def sweep(base: RunConfig, out_dir: str | Path, settings: Sequence[tuple[str, int, int]],
          progress: bool = True, restart: bool = False, parallel: int = 1) -> list[dict[str, Any]]:
    """Train and evaluate every (fusion, L_f, B) setting of `base`; write `results.json` / `results.csv`.

    Each row records its setting as data (and where its run directory is); settings that build the same model
    (`model_key`) share one run, and settings already evaluated with the same configuration are not run again
    (another configuration is refused; `restart` runs every one again). All settings read one token cache;
    `parallel` settings train at once, in threads of this process (XLA compiles or computes one while another
    runs Python: the data pipeline, checkpoints, evaluation).
    """
    out = writable_dir(out_dir, "sweep directory")
    dataset = load_dataset(base.data)
    runs = [base.replace(model={"fusion": fusion, "fusion_layer": lf, "num_bottlenecks": b})
            for fusion, lf, b in settings]
    trained = {}  # model key -> (the run of its first setting, its directory)
    for run in runs:
        m = run.model
        trained.setdefault(model_key(run), (run, out / variant_name(m.fusion, m.fusion_layer, m.num_bottlenecks)))
    if not restart:  # every setting checked before the first one trains
        for run, run_dir in trained.values():
            check_resume(run_dir, fit_classes(run, dataset))
    todo = [(run, run_dir) for run, run_dir in trained.values() if restart or not (run_dir / "eval.json").exists()]
    if todo:  # the token cache every setting reads, built once before any trains (settings share the geometry)
        first = todo[0][0]
        run_split(first, dataset, first.data.train_split, first.data.train_windows, progress)
        run_split(first, dataset, first.data.test_split, first.train.eval_views, progress)
        if first.train.eval_every:
            run_split(first, dataset, first.data.val_split, 1, progress)
    running: list[str] = []
    bar = tqdm(total=len(trained), initial=len(trained) - len(todo), desc="sweep", unit="run", disable=not progress)

    def train_and_test(job: tuple[RunConfig, Path]) -> None:
        run, run_dir = job
        running.append(run_dir.name)
        bar.set_postfix_str(", ".join(running), refresh=True)
        train_run(run, run_dir, progress=progress, restart=restart)
        evaluate_run(run_dir, run.data.test_split, progress=progress)
        running.remove(run_dir.name)
        bar.update()

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        for future in [pool.submit(train_and_test, job) for job in todo]:
            try:
                future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # settings in flight finish; no new one starts
                raise
    bar.close()
    rows = []
    for run in runs:
        run_dir = trained[model_key(run)][1]
        report = read_eval(run_dir)
        model = read_config(run_dir).model.replace(fusion=run.model.fusion, num_bottlenecks=run.model.num_bottlenecks)
        rows.append({"fusion": model.fusion, "fusion_layer": model.fusion_layer,
                     "num_bottlenecks": model.num_bottlenecks, "num_layers": model.num_layers, "mAP": report["mAP"],
                     "gflops": gflops(model), "gflops_official": gflops(model, "official"),
                     **{f"mAP_{k}": v for k, v in report.get("mAP_by_kind", {}).items()}, **accuracy_fields(report),
                     "run_dir": str(run_dir)})
    if jax.process_index() == 0:
        write_results(out, rows)
    return rows
