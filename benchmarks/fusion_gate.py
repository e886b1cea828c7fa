"""The synthetic benchmark's fusion grid: which class kinds each fusion strategy, L_f and B learns, in minutes on a CPU.

Trains the suite's grid (`mbt_core.suite.suite_settings`: bottleneck fusion at every L_f and B in {1, 4, 16},
vanilla self-attention and cross-attention at every L_f; settings that build one model share a run) with the
suite's schedule on `mbt synth --seed 11` data, in one process as `mbt suite` does, and prints the wall time
(with tokenising the splits) and per setting the test AP by class kind beside each kind's positive rate.
Usage: python benchmarks/fusion_gate.py --data DIR --out DIR [--steps N] [--clips N] [--parallel N]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

from mbt_core.experiment import sweep
from mbt_core.recipes import load_run_config
from mbt_core.run_dir import read_eval
from mbt_core.suite import RECIPE, ensure_synthetic, quick_train, suite_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth11")
    parser.add_argument("--out", default="runs/fusion_grid")
    parser.add_argument("--steps", type=int, default=None, help="training steps per setting (default: the suite's)")
    parser.add_argument("--clips", type=int, default=None, help="clips to generate (default: the suite's)")
    parser.add_argument("--parallel", type=int, default=2, help="settings trained at once (threads)")
    args = parser.parse_args()
    start = time.monotonic()
    data = ensure_synthetic(args.data, num_clips=args.clips)
    print(f"data: {time.monotonic() - start:.0f} s")
    train = quick_train(False) | ({"steps": args.steps} if args.steps else {})
    base = load_run_config(RECIPE).replace(train=train, data={"dir": str(data)})
    begin = time.monotonic()
    rows = sweep(base, args.out, suite_settings(base.model.num_layers), progress=False, parallel=args.parallel)
    runs = len({row["run_dir"] for row in rows})
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}; {train['steps']} steps of batch {base.train.batch_size}; {len(rows)} "
          f"settings in {runs} runs ({args.parallel} at a time): {time.monotonic() - begin:.0f} s, "
          f"total {time.monotonic() - start:.0f} s")
    rates = read_eval(rows[0]["run_dir"])["positive_rate_by_kind"]
    kinds = list(rates)
    print("| fusion | L_f | B | mAP | " + " | ".join(kinds) + " |")
    print("|---|---|---|---|" + "---|" * len(kinds))
    for row in rows:
        print(f"| {row['fusion']} | {row['fusion_layer']} | {row['num_bottlenecks']} | {row['mAP']:.3f} | "
              + " | ".join(f"{row[f'mAP_{k}']:.3f}" for k in kinds) + " |")
    print("| positive rate | | | | " + " | ".join(f"{rates[k]:.3f}" for k in kinds) + " |")


if __name__ == "__main__":
    main()
