"""Forward and forward+backward throughput of MBT per fusion strategy, beside the machine's matmul rate.

GFLOP/s use the project's convention (one multiply-add = one FLOP) for the model and the matmul alike.
Usage: python benchmarks/model_bench.py [--presets paper-b16 tiny] [--batch 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp

from mbt_core import MBT, MBTConfig, dummy_inputs
from mbt_core.model.flops import gflops


def timed(fn, *args, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up (compilation) call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(n: int = 2048, repeats: int = 3) -> float:
    """Measured multiply-add GFLOP/s of one large float32 matmul."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    mm = jax.jit(lambda a: a @ a)
    return n ** 3 / timed(mm, a, repeats=repeats) / 1e9


def machine_line(peak: float) -> str:
    """The machine, its devices, jax's version and the measured matmul rate, for a results table."""
    device = jax.devices()[0]
    return (f"machine: {platform.node()} {device.platform} {device.device_kind}, {jax.device_count()} device(s); "
            f"jax {jax.__version__}; 2048^2 float32 matmul: {peak:.1f} GFLOP/s (multiply-add = 1)")


def bench(config: MBTConfig, batch: int, repeats: int) -> dict[str, float]:
    """Clips/s and GFLOP/s of the forward and the forward+backward pass of one config."""
    model, x = MBT(config), dummy_inputs(config, batch)
    params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x, train=False)["params"])()
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)[0])
    loss = lambda p, x: jnp.mean(model.apply({"params": p}, x, train=False)[0] ** 2)
    backward = jax.jit(jax.grad(loss))
    flops = gflops(config) * batch
    t_fwd, t_bwd = timed(forward, params, x, repeats=repeats), timed(backward, params, x, repeats=repeats)
    # A backward pass costs about twice the forward: 3x the forward FLOPs in all.
    return {"fwd_clips_s": batch / t_fwd, "fwd_gflop_s": flops / t_fwd,
            "train_clips_s": batch / t_bwd, "train_gflop_s": 3 * flops / t_bwd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper-b16"])
    parser.add_argument("--batch", type=int, default=None, help="default: 32 for tiny, 1 for paper-b16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    peak = matmul_rate()
    print(machine_line(peak))
    print("| preset | fusion | batch | GFLOPs/clip | fwd clips/s | fwd GFLOP/s | fwd+bwd clips/s | fwd+bwd GFLOP/s |"
          " fwd+bwd MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        batch = args.batch or (32 if preset in ("tiny", "micro") else 1)
        for fusion in ("bottleneck", "cross_attention", "self_attention"):
            config = MBTConfig.preset(preset, fusion=fusion)
            r = bench(config, batch, args.repeats)
            print(f"| {preset} | {fusion} | {batch} | {gflops(config):.2f} | {r['fwd_clips_s']:.2f} | "
                  f"{r['fwd_gflop_s']:.1f} | {r['train_clips_s']:.2f} | {r['train_gflop_s']:.1f} | "
                  f"{r['train_gflop_s'] / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
