"""Forward and forward+backward throughput of MBT: today's path beside the new one, in one run.

"today" is the explicit softmax(QKᵀ)V (`model.attention_impl="explicit"`); "new" is `attention_impl="auto"`
(`per_head` on CPU). Each pair of calls alternates the two (after one warm-up each); the table gives the
best time of each and the median of the per-pair ratios today/new. GFLOP/s use the project's convention
(one multiply-add = one FLOP) for the model and the matmul alike; fwd+bwd counts 3x the forward.
Usage: python benchmarks/model_bench.py [--presets tiny paper-b16] [--fusions bottleneck] [--pairs 3] [--peak-tflops 989]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from mbt_core import MBT, MBTConfig, dummy_inputs
from mbt_core.model.flops import gflops

DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def seconds(fn, *args) -> float:
    """Wall time of one call, to the end of its computation."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def timed(fn, *args, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up (compilation) call."""
    jax.block_until_ready(fn(*args))
    return min(seconds(fn, *args) for _ in range(repeats))


def alternate(old, new, args_old, args_new, pairs: int) -> tuple[float, float, float]:
    """Best seconds of `old` and of `new` over alternating calls, and the median per-pair ratio old/new."""
    jax.block_until_ready(old(*args_old))
    jax.block_until_ready(new(*args_new))
    times = [(seconds(old, *args_old), seconds(new, *args_new)) for _ in range(pairs)]
    return min(t for t, _ in times), min(t for _, t in times), statistics.median(a / b for a, b in times)


def matmul_rate(n: int = 2048, repeats: int = 3) -> float:
    """Measured multiply-add GFLOP/s of one large float32 matmul."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    mm = jax.jit(lambda a: a @ a)
    return n ** 3 / timed(mm, a, repeats=repeats) / 1e9


def mfu_peak(peak_tflops: float | None) -> float:
    """The multiply-add GFLOP/s that MFU is against: a stated device peak (vendor TFLOP/s count a multiply-add
    as 2 FLOPs, so it is halved), else the measured float32 matmul rate."""
    return peak_tflops * 1e3 / 2 if peak_tflops else matmul_rate()


def add_peak_argument(parser: argparse.ArgumentParser) -> None:
    """`--peak-tflops`: the device's dense bf16 peak for MFU on an accelerator (H100/H200 SXM: 989)."""
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="MFU against this dense peak (vendor TFLOP/s) instead of the measured matmul rate")


def machine_line(peak: float) -> str:
    """The machine, its devices, jax's version and the measured matmul rate, for a results table."""
    device = jax.devices()[0]
    return (f"machine: {platform.node()} {device.platform} {device.device_kind}, {jax.device_count()} device(s); "
            f"jax {jax.__version__}; MFU against {peak:.1f} GFLOP/s (multiply-add = 1)")


def functions(config: MBTConfig, dtype, batch: int):
    """Jitted forward and gradient of one config in one compute dtype, with their arguments."""
    model, x = MBT(config, dtype=dtype), dummy_inputs(config, batch)
    params = jax.jit(lambda: MBT(config).init(jax.random.PRNGKey(0), x, train=False)["params"])()
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)[0])
    loss = lambda p, x: jnp.mean(model.apply({"params": p}, x, train=False)[0].astype(jnp.float32) ** 2)
    return forward, jax.jit(jax.grad(loss)), (params, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper-b16"])
    parser.add_argument("--fusions", nargs="+", default=["bottleneck", "cross_attention", "self_attention"])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=None, help="default: 32 for tiny, 1 for paper-b16")
    parser.add_argument("--pairs", type=int, default=3)
    add_peak_argument(parser)
    args = parser.parse_args()
    peak = mfu_peak(args.peak_tflops)
    print(machine_line(peak))
    print("| preset | fusion | dtype | batch | pass | today s | new s | today/new (median of pairs) | new GFLOP/s |"
          " new MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        batch = args.batch or (32 if preset in ("tiny", "micro") else 1)
        for fusion in args.fusions:
            for name in args.dtypes:
                today = MBTConfig.preset(preset, fusion=fusion, attention_impl="explicit")
                old, new = functions(today, DTYPES[name], batch), functions(today.replace(attention_impl="auto"),
                                                                             DTYPES[name], batch)
                flops = gflops(today) * batch
                for i, (label, factor) in enumerate((("fwd", 1), ("fwd+bwd", 3))):
                    t_old, t_new, ratio = alternate(old[i], new[i], old[2], new[2], args.pairs)
                    print(f"| {preset} | {fusion} | {name} | {batch} | {label} | {t_old:.3f} | {t_new:.3f} | "
                          f"{ratio:.2f}x | {factor * flops / t_new:.1f} | {factor * flops / t_new / peak:.0%} |",
                          flush=True)


if __name__ == "__main__":
    main()
