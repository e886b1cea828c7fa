"""Training (Sec. 4.2): data-parallel over every device, resumable from orbax checkpoints, guarded.

`train_and_evaluate(run, workdir, data)` (flax's idiom) writes `config.json`, `metrics.jsonl`, `checkpoints/`
(the last N) and, with validation, `best/` (the best by validation mAP, or EPIC's action top-1); re-running
the same command resumes from the latest checkpoint with the same data order and random streams, so an
interrupted run ends with the parameters of an uninterrupted one. A run directory started with another
configuration is refused before anything is written (`run_dir.check_resume`). SIGINT (Ctrl-C) or SIGTERM
ends the current step, checkpoints it and raises `TrainingInterrupted`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import types
from pathlib import Path
from typing import Any, Callable

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from mbt_core.data.augment import mixup
from mbt_core.model.model import MBT, dummy_inputs
from mbt_core.recipes import RunConfig
from mbt_core.run_dir import MetricsLog, check_resume, trim_metrics, write_config
from mbt_core.train.checkpoint_integrity import restore_intact, write_checksums
from mbt_core.train.losses import mbt_loss
from mbt_core.train.optim import make_optimizer


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN or infinite loss; the last good state was checkpointed."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after checkpointing the step it had reached."""

    def __init__(self, signum: int, step: int, workdir: Path):
        self.signum, self.step, self.workdir = signum, step, workdir
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpointed in {workdir} "
                         f"(run the same command again to resume)")


@contextlib.contextmanager
def stop_requests() -> Any:
    """Within the block, SIGINT and SIGTERM only set `.signum` on the yielded object (the main thread only;
    elsewhere signals keep their handlers); a second signal while it is set interrupts at once."""
    request = types.SimpleNamespace(signum=None)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: Any) -> None:
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator: params, optimiser state, step, RNG."""

    params: Any
    opt_state: Any
    step: jnp.ndarray
    rng: jnp.ndarray  # Base key; each step folds in its own number.


def data_mesh() -> Mesh:
    """A 1-D mesh over every device of every host: the batch is split along `data`, params replicated."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def init_state(run: RunConfig, steps_per_epoch: int, params: Any = None) -> tuple[TrainState, Any]:
    """A fresh TrainState (random init unless `params` is given) and the optax transformation."""
    model = MBT(run.model)
    rng = jax.random.PRNGKey(run.train.seed)
    if params is None:
        init = jax.jit(lambda key: model.init(key, dummy_inputs(run.model, 1), train=False)["params"])
        params = init(jax.random.split(rng)[0])  # jitted: eager initialisation is far slower on CPU
    tx = make_optimizer(run.train, steps_per_epoch)
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.asarray(0, jnp.int32), rng=rng), tx


def make_train_step(run: RunConfig, tx: Any, label_type: str) -> Callable:
    """A pure (state, batch) -> (state, metrics) step: loss, gradients, clipped optimiser update.

    A non-finite loss leaves the state as it was (the guard's last good state), so the caller may donate it.
    """
    dtype = jnp.dtype(run.train.compute_dtype)
    model = MBT(run.model, dtype=dtype)  # float32 master parameters, activations in `dtype`
    per_modality = run.train.loss == "per_modality" and run.model.classifier == "token"

    def loss_fn(params, batch, rng):
        inputs = {m: batch[m].astype(dtype) for m in run.model.modalities if m in batch}
        logits, aux = model.apply({"params": params}, inputs, train=True, rngs={"dropout": rng})
        logits, aux = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), (logits, aux))
        return mbt_loss(logits, aux, batch, label_type, per_modality=per_modality,
                        smoothing=run.train.label_smoothing)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}  # what clipping bounds
        new = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        finite = jnp.isfinite(loss)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, state), metrics

    return step


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place this host's examples on its devices as one global batch split along `data`."""
    devices = mesh.devices.size
    local = next(iter(batch.values()))
    size = len(local) * jax.process_count()
    if size % devices:
        raise ValueError(f"a global batch of {size} examples cannot be split across {devices} devices: "
                         f"choose train.batch_size divisible by {devices}")
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def checkpoint_manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    """An orbax manager keeping the last `keep` checkpoints of (state, data iterator)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options, item_names=("state", "data"))


class IteratorState(grain.DatasetIterator):
    """The loop's batches as grain's orbax handler takes them: it stores each process's `get_state()` as
    `data/process_<i>-of-<n>.json` and gives each process its own back (it accepts grain iterators only)."""

    def __init__(self, batches: Any):
        super().__init__()
        self._batches = batches

    def __next__(self) -> Any:
        return next(self._batches)

    def get_state(self) -> dict:
        """The batches' state (JSON-able)."""
        return self._batches.get_state()

    def set_state(self, state: dict) -> None:
        """Continue the batches from a saved state."""
        self._batches.set_state(state)


def check_process_count(data_dir: Path) -> None:
    """Refuse (ValueError) to resume data iterator states written by another number of processes."""
    written = sorted(p.name for p in data_dir.glob("process_*-of-*.json"))
    mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if written and mine not in written:
        raise ValueError(f"{data_dir}: the data iterator states were written by another number of processes "
                         f"({', '.join(written)}); resume with as many as wrote them")


def save(manager: ocp.CheckpointManager, state: TrainState, batches: Any) -> None:
    """Write one checkpoint at the state's step (atomic: an interrupted write is never read back), with checksums;
    a step already saved (the checkpoint a stopped run resumed from) is kept as it is. Every process calls it
    (orbax writes collectively), each saving its own data iterator state."""
    step = int(state.step)
    if step in manager.all_steps():
        return
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=grain.checkpoint.CheckpointSave(IteratorState(batches))),
                 force=True)
    manager.wait_until_finished()
    if jax.process_index() == 0:
        write_checksums(Path(manager.directory) / str(step))


def restore(manager: ocp.CheckpointManager, template: TrainState, batches: Any = None) -> TrainState | None:
    """The latest intact state, or None when there is no checkpoint; given `batches`, this process's data
    iterator state is restored into them too.

    A damaged newer checkpoint is moved aside with a warning (`checkpoint_integrity`); none intact raises.
    """
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    if batches is not None and manager.latest_step() is not None:
        check_process_count(Path(manager.directory) / str(manager.latest_step()) / "data")

    def load(step: int) -> TrainState:
        items = {"state": ocp.args.StandardRestore(abstract)}
        data_dir = Path(manager.directory) / str(step) / "data"
        # Written before per-process iterator states: one process's grain state as one JSON item.
        legacy = batches is not None and data_dir.is_dir() and not any(data_dir.glob("process_*-of-*.json"))
        if batches is not None:
            items["data"] = (ocp.args.JsonRestore() if legacy
                             else grain.checkpoint.CheckpointRestore(IteratorState(batches)))
        got = manager.restore(step, args=ocp.args.Composite(**items))
        if legacy:
            batches.set_state({"process_index": 0, "process_count": 1, "grain": got.data})
        return got.state

    found = restore_intact(Path(manager.directory), manager.all_steps(), load)
    if found is None:
        return None
    if found[0] != manager.latest_step():
        manager.reload()  # broken newer steps were moved aside
    return found[1]


@dataclasses.dataclass
class TrainData:
    """What the loop reads: batches (an iterator with `get_state` / `set_state`), their label type, the
    optimiser steps of one epoch, and optionally a validation (parameters -> {"mAP": ..., ...}) and the entry
    of it that picks the best checkpoint (`best_metric`, higher is better)."""

    batches: Any
    label_type: str
    steps_per_epoch: int
    validate: Callable[[Any], dict] | None = None
    best_metric: str = "mAP"


def train_and_evaluate(run: RunConfig, workdir: str | Path, data: TrainData, *, params: Any = None,
                       progress: bool = True) -> TrainState:
    """Train `run` on `data` into `workdir`, resuming from its latest checkpoint; validate every
    `train.eval_every` steps and at the end (never with eval_every = 0), keeping the best in `best/`."""
    out = Path(workdir)
    primary = jax.process_index() == 0  # the one process that writes config, metrics and best.json
    changes = check_resume(out, run)  # before anything is written or restored
    if primary:
        for key, (old, new) in changes.items():
            print(f"{out}: resuming with {key} {old!r} -> {new!r}")
        write_config(out, run)
    cfg = run.train
    state, tx = init_state(run, data.steps_per_epoch, params)
    manager = checkpoint_manager(out / "checkpoints", cfg.keep_checkpoints)
    best_manager = checkpoint_manager(out / "best", 1)
    restored = restore(manager, state, data.batches)
    state = state if restored is None else restored
    best_path = out / "best.json"
    if primary:
        trim_metrics(out, int(state.step))  # lines logged after the checkpoint are logged again
    best = json.loads(best_path.read_text())["value"] if best_path.exists() else -math.inf
    mesh = data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    # Through host values: every process holds the same state, and jax moves no array between hosts on CPU.
    state = jax.device_put(jax.device_get(state), replicated)
    # Donated (held once): on a non-finite loss the step returns its input state, which the guard checkpoints.
    step_fn = jax.jit(make_train_step(run, tx, data.label_type), donate_argnums=0)
    validate = data.validate if cfg.eval_every else None
    start = int(state.step)
    bar = tqdm(total=cfg.steps, initial=start, desc="train", disable=not (progress and primary), unit="step",
               leave=None)
    with MetricsLog(out) if primary else contextlib.nullcontext() as log, stop_requests() as stop:
        for step in range(start, cfg.steps):
            if stop.signum is not None:
                save(manager, state, data.batches)
                bar.close()
                raise TrainingInterrupted(stop.signum, step, out)
            batch = dict(next(data.batches))
            clip_ids = list(batch.pop("clip_id"))
            batch.pop("window", None), batch.pop("spec_window", None)  # which cached windows: for tests
            if cfg.mixup_alpha > 0:
                batch = mixup(batch, np.random.default_rng([cfg.seed, step]), cfg.mixup_alpha,
                              modality_mixup=cfg.modality_mixup, modalities=list(run.model.modalities))
                batch = {k: v for k, v in batch.items() if not k.startswith("mixup_")}  # weights, partner
            state, metrics = step_fn(state, shard_batch(batch, mesh))
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                save(manager, state, data.batches)
                raise NonFiniteLossError(f"non-finite loss {loss} at step {step}; clips in the batch: "
                                         f"{', '.join(map(str, clip_ids))}; "
                                         f"the last good state (step {int(state.step)}) is checkpointed in {out}")
            done = step + 1
            record = {"step": done, "loss": loss, "grad_norm": float(metrics["grad_norm"])}
            if validate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                record.update({f"val_{k}": v for k, v in validate(state.params).items()})
                if record.get(f"val_{data.best_metric}", -math.inf) > best:
                    best = record[f"val_{data.best_metric}"]
                    save(best_manager, state, data.batches)
                    if primary:
                        best_path.write_text(json.dumps({"step": done, "metric": data.best_metric, "value": best}))
            if log is not None and (done % cfg.log_every == 0 or done == cfg.steps or len(record) > 3):
                log.append(record)
                bar.set_postfix(loss=f"{loss:.4f}")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(manager, state, data.batches)
            bar.update(1)
    bar.close()
    return state
