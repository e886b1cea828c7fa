"""Training-step throughput, today's path beside the new one, and the step's peak memory with and without remat.

One full step of `mbt_core.train.loop` (forward, backward, clipping, optimiser update) on random inputs.
"today": explicit attention, state not donated; "new": `attention_impl="auto"`, state donated. Pairs of
calls alternate the two; the ratio is the median over pairs. FLOPs are 3x the forward count (one
multiply-add = one FLOP), MFU is against the measured matmul rate or `--peak-tflops`. Memory: XLA's buffer assignment of the
compiled step (arguments + outputs - donated aliases + temporaries; an estimate of the backend's peak,
computed without running; on CPU it did not move with remat, see RESULTS.md), jax's saved residuals (what the
backward pass keeps, backend-independent), the device's `memory_stats` peak where the backend has them, else
the process RSS.
Usage: python benchmarks/train_bench.py [--presets tiny paper-b16] [--pairs 3] [--estimate-batch 64] [--peak-tflops 989]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mbt_core.config import MBTConfig
from mbt_core.model.flops import gflops
from mbt_core.model.model import MBT, dummy_inputs
from mbt_core.recipes import RunConfig, load_run_config
from mbt_core.train.loop import init_state, make_train_step
from mbt_core.train.optim import make_optimizer
from model_bench import DTYPES, add_peak_argument, machine_line, mfu_peak

GB = 1e9


def run_config(preset: str, fusion: str, batch: int, dtype: str, **model) -> RunConfig:
    """The preset's model in its recipe's training setup (paper recipe for paper-b16)."""
    recipe = load_run_config("paper" if preset == "paper-b16" else "synthetic-tiny")
    config = MBTConfig.preset(preset, fusion=fusion, stochastic_depth=recipe.model.stochastic_depth, **model)
    return RunConfig(config, recipe.train).replace(train={"batch_size": batch, "compute_dtype": dtype})


def random_batch(run: RunConfig, batch: int) -> dict:
    """Random inputs and multi-hot labels of the run's shapes."""
    rng = np.random.default_rng(0)
    arrays = {m: rng.normal(size=x.shape).astype(np.float32) for m, x in dummy_inputs(run.model, batch).items()}
    arrays["labels"] = (rng.random((batch, run.model.total_classes)) < 0.1).astype(np.float32)
    return arrays


def compiled_peak_gb(run: RunConfig, batch: int, donate: bool) -> float:
    """XLA's memory analysis of the jitted step at this batch, from abstract shapes (nothing allocated)."""
    state, tx = jax.eval_shape(lambda: init_state(run, 10)[0]), make_optimizer(run.train, 10)
    arrays = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), random_batch(run, 1))
    arrays = {k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype) for k, v in arrays.items()}
    step = jax.jit(make_train_step(run, tx, "multi_label"), donate_argnums=0 if donate else ())
    m = step.lower(state, arrays).compile().memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes) / GB


def residuals_gb(run: RunConfig, batch: int) -> float:
    """Bytes the backward pass keeps from the forward (jax's saved residuals, abstract: nothing allocated)."""
    model = MBT(run.model, dtype=jnp.dtype(run.train.compute_dtype))
    x = {m: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype) for m, v in dummy_inputs(run.model, 1).items()}
    params = jax.eval_shape(lambda: init_state(run, 10)[0].params)

    def loss(p, x):
        logits, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
        return jnp.mean(logits.astype(jnp.float32) ** 2)

    # The vjp function's leaves are exactly what the forward pass saved for the backward pass.
    saved = jax.eval_shape(lambda p, x: jax.vjp(lambda q: loss(q, x), p)[1], params, x)
    return sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(saved)) / GB


def measured_peak_gb() -> str:
    """The device's peak bytes in use where the backend reports it, else this process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"device peak {stats['peak_bytes_in_use'] / GB:.2f} GB"
    return f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB:.2f} GB"


def compare(preset: str, fusion: str, batch: int, dtype: str, pairs: int) -> tuple[float, float, float]:
    """Best seconds per step of today's and the new step, alternating, and the median per-pair ratio."""
    steps = {}
    for label, impl, donate in (("today", "explicit", False), ("new", "auto", True)):
        run = run_config(preset, fusion, batch, dtype, attention_impl=impl)
        state, tx = init_state(run, 10)
        steps[label] = [jax.jit(make_train_step(run, tx, "multi_label"), donate_argnums=0 if donate else ()), state]
    arrays = random_batch(run, batch)
    times = {"today": [], "new": []}
    for i in range(pairs + 1):  # the first round compiles
        for label, entry in steps.items():
            fn, state = entry
            start = time.perf_counter()
            entry[1], metrics = fn(state, arrays)  # the donated state is threaded through
            jax.block_until_ready(metrics["loss"])
            if i:
                times[label].append(time.perf_counter() - start)
    return min(times["today"]), min(times["new"]), statistics.median(a / b for a, b in zip(times["today"], times["new"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper-b16"])
    parser.add_argument("--fusions", nargs="+", default=["bottleneck", "cross_attention", "self_attention"])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--estimate-batch", type=int, default=64, help="paper-b16 batch of the memory estimate")
    add_peak_argument(parser)
    args = parser.parse_args()
    peak = mfu_peak(args.peak_tflops)
    print(machine_line(peak))
    print("| preset | fusion | dtype | batch | today s/step | new s/step | today/new (median of pairs) | new GFLOP/s |"
          " new MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = {"f32": "float32", "bf16": "bfloat16"}
    for preset in args.presets:
        batch = 32 if preset == "tiny" else 2
        for fusion in args.fusions:
            for dtype in args.dtypes:
                t_old, t_new, ratio = compare(preset, fusion, batch, names[dtype], args.pairs)
                flops = 3 * gflops(MBTConfig.preset(preset, fusion=fusion)) * batch
                print(f"| {preset} | {fusion} | {dtype} | {batch} | {t_old:.3f} | {t_new:.3f} | {ratio:.2f}x | "
                      f"{flops / t_new:.1f} | {flops / t_new / peak:.0%} |", flush=True)
    print(f"\n{measured_peak_gb()} (all rows above, one process)\n")
    print("| preset | batch | dtype | remat | saved residuals GB | state GB (params, optimiser, step) |"
          " XLA CPU peak estimate GB (donated) |")
    print("|---|---|---|---|---|---|---|")
    for preset, batch in [(p, 32 if p == "tiny" else 2) for p in args.presets] + [("paper-b16", args.estimate_batch)]:
        for dtype in ("float32", "bfloat16"):
            for remat in (False, True):
                run = run_config(preset, "bottleneck", batch, dtype, remat=remat)
                state = jax.eval_shape(lambda: init_state(run, 10)[0])
                state_gb = sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state)) / GB
                print(f"| {preset} | {batch} | {dtype} | {remat} | {residuals_gb(run, batch):.2f} | {state_gb:.2f} | "
                      f"{compiled_peak_gb(run, batch, True):.2f} |", flush=True)


if __name__ == "__main__":
    main()
