"""The synthetic benchmark's fusion grid: which class kinds each fusion strategy, L_f and B learns, in minutes on a CPU.

Trains the suite's grid (`mbt_core.suite.suite_settings`: bottleneck fusion at every L_f and B in {1, 4, 16},
vanilla self-attention and cross-attention at every L_f; late fusion once) with the suite's schedule on
`mbt synth --seed 11` data, and prints per setting the seconds it took (training and evaluation; the first
also tokenises the splits) and the test AP by class kind beside each kind's positive rate.
Usage: python benchmarks/fusion_gate.py --data DIR --out DIR [--steps N] [--clips N]
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
    args = parser.parse_args()
    start = time.monotonic()
    data = ensure_synthetic(args.data, num_clips=args.clips)
    print(f"data: {time.monotonic() - start:.0f} s")
    train = quick_train(False) | ({"steps": args.steps} if args.steps else {})
    base = load_run_config(RECIPE).replace(train=train, data={"dir": str(data)})
    rows, seconds = [], {}
    for setting in suite_settings(base.model.num_layers):
        begin = time.monotonic()
        [row] = sweep(base, args.out, [setting], progress=False)
        rows.append(row)
        seconds[row["run_dir"]] = seconds.get(row["run_dir"], time.monotonic() - begin)
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}; {train['steps']} steps of batch {base.train.batch_size}; "
          f"total {time.monotonic() - start:.0f} s")
    rates = read_eval(rows[0]["run_dir"])["positive_rate_by_kind"]
    kinds = list(rates)
    print("| fusion | L_f | B | s | mAP | " + " | ".join(kinds) + " |")
    print("|---|---|---|---|---|" + "---|" * len(kinds))
    for row in rows:
        print(f"| {row['fusion']} | {row['fusion_layer']} | {row['num_bottlenecks']} | {seconds[row['run_dir']]:.0f} | "
              f"{row['mAP']:.3f} | " + " | ".join(f"{row[f'mAP_{k}']:.3f}" for k in kinds) + " |")
    print("| positive rate | | | | | " + " | ".join(f"{rates[k]:.3f}" for k in kinds) + " |")


if __name__ == "__main__":
    main()
