"""The `mbt` command: one subcommand per job, each a thin call into a tested module."""
from __future__ import annotations

import argparse
import sys

from mbt_core.config import FUSIONS, PRESETS, MBTConfig


def parse_overrides(pairs: list[str]) -> dict:
    """MBTConfig `field=value` strings to a dict, each value checked against the field's type."""
    from mbt_core.recipes import parse_override

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r}: expected key=value")
        _, key, value = parse_override(f"model.{pair}")
        out[key] = value
    return out


def format_flops_table(config: MBTConfig) -> str:
    """Both FLOP conventions over L_f = 0..L side by side, with the bottleneck/cross-attention finding."""
    from mbt_core.model.flops import flops_table

    tables = {conv: flops_table(config, conv) for conv in ("official", "efficient")}
    short = {"bottleneck": "bottleneck", "cross_attention": "cross-attn", "self_attention": "self-attn"}
    head = "L_f | " + " | ".join(f"{short[f]:>10} {c[:3]}" for c in tables for f in FUSIONS)
    lines = [f"GFLOPs per clip (multiply-add = 1 FLOP), {config.num_patches('rgb') if 'rgb' in config.modalities else 0}"
             f" RGB + {config.num_patches('spec') if 'spec' in config.modalities else 0} spectrogram patches, "
             f"B = {config.num_bottlenecks}; 'off' = official convention, 'eff' = this implementation", head,
             "-" * len(head)]
    for lf in range(config.num_layers + 1):
        cells = [f"{tables[c][f][lf]:14.1f}" for c in tables for f in FUSIONS]
        lines.append(f"{lf:>3} | " + " | ".join(cells))
    for conv, table in tables.items():
        ratio = table["bottleneck"][0] / table["cross_attention"][0]
        verdict = "holds" if ratio < 0.5 else "does not hold"
        lines.append(f"{conv}: bottleneck / cross-attention at L_f = 0 = {ratio:.3f} -> "
                     f"'bottleneck costs less than half' {verdict}")
    return "\n".join(lines)


def cmd_flops(args: argparse.Namespace) -> None:
    overrides = parse_overrides(args.overrides)
    if args.spec_seconds is not None:
        overrides["spec_seconds"] = args.spec_seconds
    print(format_flops_table(MBTConfig.preset(args.preset, **overrides)))


def cmd_train(args: argparse.Namespace) -> None:
    from mbt_core.experiment import train_run
    from mbt_core.run_dir import load_config

    if args.distributed:  # multi-host: every host runs this same command; each reads its own data shard
        import jax
        jax.distributed.initialize()

    run = load_config(args.config, args.overrides)
    if args.data:
        run = run.replace(data={"dir": args.data})
    trained = train_run(run, args.out)
    print(f"trained {trained.train.steps} steps into {args.out}")


def cmd_tokenise(args: argparse.Namespace) -> None:
    from mbt_core.data.pipeline import load_dataset, record_statistics, tokenised_split
    from mbt_core.run_dir import load_config

    run = load_config(args.config, args.overrides).replace(data={"dir": args.data})
    dataset = load_dataset(run.data)
    if args.stats:  # over the raw (unnormalised) training split, recorded in the card
        train = tokenised_split(dataset, run.data.train_split, run.model, run.data.train_windows,
                                on_error=run.data.on_error)
        stats = record_statistics(dataset, train, run.data.train_split)
        print(f"spectrogram mean {stats['mean']:.4f}, std {stats['std']:.4f} -> {dataset.card['path']}")
    for split in args.splits or sorted(dataset.splits):
        views = args.views or (run.data.train_windows if split == run.data.train_split else run.train.eval_views)
        cached = tokenised_split(dataset, split, run.model, views, on_error=run.data.on_error,
                                 normalise=run.data.normalise_spec)
        print(f"{split}: {len(cached)} clips x {views} view(s) cached")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mbt_core.experiment import evaluate_run

    report = evaluate_run(args.run_dir, args.split, args.checkpoint)
    kinds = report.get("mAP_by_kind", {})
    print(f"{args.run_dir}: mAP {report['mAP']:.4f} on {args.split} ({report['num_clips']} clips)"
          + "".join(f"; {k} {v:.4f} (positive rate {report['positive_rate_by_kind'][k]:.3f})" for k, v in kinds.items()))


def cmd_sweep(args: argparse.Namespace) -> None:
    from mbt_core.experiment import grid, sweep
    from mbt_core.run_dir import load_config

    base = load_config(args.config, args.overrides).replace(data={"dir": args.data})
    rows = sweep(base, args.out, grid(args.fusions, args.fusion_layers, args.bottlenecks))
    print(f"{len(rows)} settings -> {args.out}/results.csv")


def cmd_synth(args: argparse.Namespace) -> None:
    from mbt_core.datasets.synthetic import KINDS, generate

    result = generate(args.out, num_clips=args.num_clips, seed=args.seed, clip_seconds=args.clip_seconds,
                      size=args.size, difficulty=args.difficulty, kinds=args.kinds or KINDS, workers=args.workers)
    print(f"{result.written} clip(s) written, {result.kept} kept; {len(result.classes)} classes -> "
          f"{result.manifest}, {result.card}")


def cmd_suite(args: argparse.Namespace) -> None:
    from mbt_core.suite import run_suite

    index = run_suite(args.out, quick=args.quick)
    print(f"open {index}")


def cmd_notebooks(args: argparse.Namespace) -> None:
    from mbt_core.suite import write_notebooks

    written = write_notebooks(args.out, force=args.force)
    print(f"{len(written)} notebooks -> {args.out} (open them with `jupyter lab {args.out}`)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `mbt` subcommand."""
    parser = argparse.ArgumentParser(prog="mbt", description="Multimodal Bottleneck Transformer suite")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flops", help="print GFLOPs over L_f for every fusion strategy, both conventions")
    p.add_argument("--preset", default="paper-b16", choices=sorted(PRESETS))
    p.add_argument("--spec-seconds", type=float, default=None, help="spectrogram length t (the paper's Fig. 3 used 4)")
    p.add_argument("overrides", nargs="*", help="MBTConfig field=value overrides")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("train", help="train a recipe on a data directory (resumes from RUN_DIR's checkpoints)")
    p.add_argument("--config", required=True, help="recipe name (paper, synthetic-tiny) or a JSON config file")
    p.add_argument("--data", help="data directory (manifest.csv + data_card.md); sets data.dir")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host runs)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.fusion_layer=4 train.steps=300")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tokenise", help="pre-tokenise splits into the token cache (train/evaluate reuse it)")
    p.add_argument("--config", default="synthetic-tiny", help="recipe or JSON config: fixes the geometry")
    p.add_argument("--data", required=True)
    p.add_argument("--splits", nargs="+", default=None, help="default: every split of the manifest")
    p.add_argument("--views", type=int, default=None, help="views per clip (default: 1 for train, eval_views else)")
    p.add_argument("--stats", action="store_true", help="compute log-mel mean/std over the training split and "
                   "record them in the data card (used with data.normalise_spec=True)")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_tokenise)

    p = sub.add_parser("evaluate", help="evaluate a run; writes RUN_DIR/eval.json")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", default="latest", choices=["latest", "best"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="train and evaluate fusion x L_f x B (Fig. 3); writes results.csv/json")
    p.add_argument("--config", default="synthetic-tiny")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fusions", nargs="+", default=["bottleneck", "self_attention"])
    p.add_argument("--fusion-layers", nargs="+", type=int, default=[0, 1, 3])
    p.add_argument("--bottlenecks", nargs="+", type=int, default=[4])
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("synth", help="write the synthetic audio-visual benchmark (clips, manifest.csv, data_card.md)")
    p.add_argument("--out", required=True, help="data directory (re-running resumes: valid clips are kept)")
    p.add_argument("--num-clips", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-seconds", type=float, default=4.0)
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--difficulty", type=float, default=0.1, help="0-1: noise, hue spread, distractors")
    p.add_argument("--kinds", nargs="+", help="label kinds to include: audio, visual, pairing, "
                   "pairing_temporal (default: all)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("suite", help="the whole story: data, runs, sweep, executed notebooks, DIR/index.html")
    p.add_argument("--out", default="mbt_suite")
    p.add_argument("--quick", action="store_true", help="a tiny data set and a few steps per run (smoke test)")
    p.set_defaults(func=cmd_suite)

    p = sub.add_parser("notebooks", help="write the five notebooks (clean, no outputs) into DIR to open in JupyterLab")
    p.add_argument("--out", required=True, help="folder to write them into")
    p.add_argument("--force", action="store_true", help="overwrite copies there that were edited")
    p.set_defaults(func=cmd_notebooks)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `mbt` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:  # bad input (config, data, file): one line, argparse's usage-error status
        print(f"mbt {args.command}: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
