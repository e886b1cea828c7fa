"""Training-step throughput per fusion strategy: steps/s, clips/s, achieved GFLOP/s and MFU.

One full step of `mbt_core.train.loop` (forward, backward, clipping, optimiser update) on random inputs;
FLOPs are 3x the forward count (one multiply-add = one FLOP), MFU is against the measured matmul rate.
Usage: python benchmarks/train_bench.py [--presets tiny paper-b16] [--repeats 3]
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

from mbt_core.config import MBTConfig
from mbt_core.model.flops import gflops
from mbt_core.model.model import dummy_inputs
from mbt_core.recipes import RunConfig, load_run_config
from mbt_core.train.loop import init_state, make_train_step
from model_bench import machine_line, matmul_rate, timed


def bench(preset: str, fusion: str, batch: int, repeats: int) -> dict[str, float]:
    """Seconds per training step and the derived rates for one preset and fusion strategy."""
    recipe = load_run_config("paper" if preset == "paper-b16" else "synthetic-tiny")
    model = MBTConfig.preset(preset, fusion=fusion, stochastic_depth=recipe.model.stochastic_depth)
    run = RunConfig(model, recipe.train).replace(train={"batch_size": batch})
    state, tx = init_state(run, 10)
    step = jax.jit(make_train_step(run, tx, "multi_label"))
    rng = np.random.default_rng(0)
    batch_arrays = {m: rng.normal(size=x.shape).astype(np.float32) for m, x in dummy_inputs(run.model, batch).items()}
    batch_arrays["labels"] = (rng.random((batch, run.model.total_classes)) < 0.1).astype(np.float32)
    seconds = timed(lambda s, b: step(s, b)[1]["loss"], state, batch_arrays, repeats=repeats)
    flops = 3 * gflops(run.model) * batch
    return {"steps_s": 1 / seconds, "clips_s": batch / seconds, "gflop_s": flops / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper-b16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    peak = matmul_rate()
    print(machine_line(peak))
    print("| preset | fusion | batch | steps/s | clips/s | GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        batch = 32 if preset == "tiny" else 2
        for fusion in ("bottleneck", "cross_attention", "self_attention"):
            r = bench(preset, fusion, batch, args.repeats)
            print(f"| {preset} | {fusion} | {batch} | {r['steps_s']:.2f} | {r['clips_s']:.2f} | {r['gflop_s']:.1f} | "
                  f"{r['gflop_s'] / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
