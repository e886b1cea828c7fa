"""The `mbt` command: one subcommand per job, each a thin call into a tested module.

Errors a user can fix (a bad value, file or directory, a full disk, a stopped run) print one line
`mbt <command>: ...` and exit with status 2; an interrupt (Ctrl-C, SIGTERM) exits with 128 + the signal
number (130, 143) after training has checkpointed; anything else is an internal error (status 1). `--debug`
shows the traceback. Dotted overrides (`model.fusion_layer=2`) may stand anywhere on the line, also after
an option that takes several values (`--fusions a b model.x=1`), or after `--`.
"""
from __future__ import annotations

import argparse
import errno
import re
import signal
import sys
import traceback
from typing import Callable

from mbt_core.config import FUSIONS, PRESETS, MBTConfig

OVERRIDE = re.compile(r"^(model|train|data)\.\w+=")  # a dotted override, never an option's value
USER_ERRORS = (ValueError, OSError, FloatingPointError)  # bad input, files and disks, a non-finite loss
USAGE_ERROR, INTERNAL_ERROR = 2, 1


def parse_overrides(pairs: list[str]) -> dict:
    """MBTConfig `field=value` (or `model.field=value`) strings to a dict, each value checked against the field's type."""
    from mbt_core.recipes import parse_override

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r}: expected key=value")
        if OVERRIDE.match(pair) and not pair.startswith("model."):
            raise ValueError(f"override {pair!r}: this command takes model fields only (field=value or model.field=value)")
        _, key, value = parse_override(pair if pair.startswith("model.") else f"model.{pair}")
        out[key] = value
    return out


def flops_unit(values: Sequence[float]) -> tuple[float, str]:
    """(factor, name) that shows GFLOP values with at least three significant digits: GFLOPs, or MFLOPs below 10."""
    return (1.0, "GFLOPs") if max(values) >= 10 else (1e3, "MFLOPs")


def format_flops_table(config: MBTConfig) -> str:
    """Both FLOP conventions over L_f = 0..L side by side, with the bottleneck/cross-attention finding."""
    from mbt_core.model.flops import flops_table

    tables = {conv: flops_table(config, conv) for conv in ("official", "efficient")}
    factor, unit = flops_unit([v for t in tables.values() for row in t.values() for v in row])
    short = {"bottleneck": "bottleneck", "cross_attention": "cross-attn", "self_attention": "self-attn"}
    head = "L_f | " + " | ".join(f"{short[f]:>10} {c[:3]}" for c in tables for f in FUSIONS)
    lines = [f"{unit} per clip (multiply-add = 1 FLOP), {config.num_patches('rgb') if 'rgb' in config.modalities else 0}"
             f" RGB + {config.num_patches('spec') if 'spec' in config.modalities else 0} spectrogram patches, "
             f"B = {config.num_bottlenecks}; 'off' = official convention, 'eff' = this implementation", head,
             "-" * len(head)]
    for lf in range(config.num_layers + 1):
        cells = [f"{factor * tables[c][f][lf]:14.4g}" for c in tables for f in FUSIONS]
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
    trained = train_run(run, args.out, restart=args.restart)
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
    from mbt_core.train.evaluate import accuracy_fields

    report = evaluate_run(args.run_dir, args.split, args.checkpoint)
    kinds = report.get("mAP_by_kind", {})
    print(f"{args.run_dir}: mAP {report['mAP']:.4f} on {args.split} ({report['num_clips']} clips)"
          + "".join(f"; {k} {v:.4f}" for k, v in accuracy_fields(report).items())
          + "".join(f"; {k} {v:.4f} (positive rate {report['positive_rate_by_kind'][k]:.3f})" for k, v in kinds.items()))


def cmd_sweep(args: argparse.Namespace) -> None:
    from mbt_core.experiment import grid, sweep
    from mbt_core.run_dir import load_config

    base = load_config(args.config, args.overrides).replace(data={"dir": args.data})
    rows = sweep(base, args.out, grid(args.fusions, args.fusion_layers, args.bottlenecks), restart=args.restart)
    print(f"{len(rows)} settings -> {args.out}/results.csv")


def cmd_synth(args: argparse.Namespace) -> None:
    from mbt_core.datasets.synthetic import KINDS, generate
    from mbt_core.run_dir import writable_dir

    writable_dir(args.out, "--out")
    result = generate(args.out, num_clips=args.num_clips, seed=args.seed, clip_seconds=args.clip_seconds,
                      size=args.size, difficulty=args.difficulty, kinds=args.kinds or KINDS, workers=args.workers)
    print(f"{result.written} clip(s) written, {result.kept} kept; {len(result.classes)} classes -> "
          f"{result.manifest}, {result.card}")


def cmd_suite(args: argparse.Namespace) -> None:
    from mbt_core.run_dir import writable_dir
    from mbt_core.suite import default_workspace, run_suite

    out = writable_dir(args.out if args.out is not None else default_workspace(args.quick), "--out")
    index = run_suite(out, quick=args.quick)
    print(f"open {index}")


def cmd_predict(args: argparse.Namespace) -> None:
    from mbt_core.predict import load_checkpoint, predict

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.views is not None and args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    checkpoint = load_checkpoint(args.checkpoint, parse_overrides(args.overrides), args.which)
    outcome = predict(checkpoint, args.video, args.top_k, args.out, args.labels or (), num_views=args.views)
    print(outcome.text)
    if outcome.report is not None:
        print(f"report: {outcome.report} (open it in a browser; it needs no server)")


def cmd_notebooks(args: argparse.Namespace) -> None:
    from mbt_core.suite import write_notebooks

    written = write_notebooks(args.out, force=args.force)
    print(f"{len(written)} notebooks -> {args.out} (open them with `jupyter lab {args.out}`)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `mbt` subcommand."""
    parser = argparse.ArgumentParser(prog="mbt", description="Multimodal Bottleneck Transformer suite")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_parser(name: str, **kwargs: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = add_parser("flops", help="print GFLOPs over L_f for every fusion strategy, both conventions")
    p.add_argument("--preset", default="paper-b16", choices=sorted(PRESETS))
    p.add_argument("--spec-seconds", type=float, default=None, help="spectrogram length t (the paper's Fig. 3 used 4)")
    p.add_argument("overrides", nargs="*", help="MBTConfig field=value overrides")
    p.set_defaults(func=cmd_flops)

    p = add_parser("train", help="train a recipe on a data directory (resumes from RUN_DIR's checkpoints)")
    p.add_argument("--config", required=True, help="recipe name (paper, synthetic-tiny) or a JSON config file")
    p.add_argument("--data", help="data directory (manifest.csv + data_card.md); sets data.dir")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host runs)")
    p.add_argument("--restart", action="store_true", help="start over in a run directory that holds a run: its "
                   "files are moved to RUN_DIR/previous/<n>/ (never deleted)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.fusion_layer=4 train.steps=300")
    p.set_defaults(func=cmd_train)

    p = add_parser("tokenise", help="pre-tokenise splits into the token cache (train/evaluate reuse it)")
    p.add_argument("--config", default="synthetic-tiny", help="recipe or JSON config: fixes the geometry")
    p.add_argument("--data", required=True)
    p.add_argument("--splits", nargs="+", default=None, help="default: every split of the manifest")
    p.add_argument("--views", type=int, default=None, help="views per clip (default: 1 for train, eval_views else)")
    p.add_argument("--stats", action="store_true", help="compute log-mel mean/std over the training split and "
                   "record them in the data card (used with data.normalise_spec=True)")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_tokenise)

    p = add_parser("evaluate", help="evaluate a run; writes RUN_DIR/eval.json")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", default="latest", choices=["latest", "best"])
    p.set_defaults(func=cmd_evaluate)

    p = add_parser("sweep", help="train and evaluate fusion x L_f x B (Fig. 3); writes results.csv/json")
    p.add_argument("--config", default="synthetic-tiny")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fusions", nargs="+", default=["bottleneck", "self_attention"])
    p.add_argument("--fusion-layers", nargs="+", type=int, default=[0, 1, 3])
    p.add_argument("--bottlenecks", nargs="+", type=int, default=[4])
    p.add_argument("--restart", action="store_true", help="train every setting again (earlier runs are moved to "
                   "<run>/previous/<n>/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run, e.g. train.steps=50 "
                   "(anywhere on the line)")
    p.set_defaults(func=cmd_sweep)

    p = add_parser("synth", help="write the synthetic audio-visual benchmark (clips, manifest.csv, data_card.md)")
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

    p = add_parser("suite", help="the whole story: data, runs, sweep, executed notebooks, DIR/index.html")
    p.add_argument("--out", default=None, help="the workspace to fill (default: $MBT_WORKSPACE, else ~/mbt_suite; "
                                                "quick runs use its quick/ subfolder); notebooks read the same default")
    p.add_argument("--quick", action="store_true", help="a tiny data set and a few steps per run (smoke test)")
    p.set_defaults(func=cmd_suite)

    p = add_parser("predict", help="top-k classes of one video (fused, audio-only, visual-only readouts) from an "
                   "official checkpoint or a run directory; --out writes an HTML report")
    p.add_argument("checkpoint", help="official Scenic MBT checkpoint (msgpack or .npz) or an mbt run directory")
    p.add_argument("video", help="a video file (mp4, mkv, ...); a clip without audio is read from its frames")
    p.add_argument("--top-k", type=int, default=5, help="classes to print per readout")
    p.add_argument("--out", help="folder for report.html (self-contained: tables, rollout overlays, patch grid)")
    p.add_argument("--labels", action="append", help="class list: AudioSet class_labels_indices.csv, VGGSound "
                   "stat.csv, EPIC_100_{verb,noun}_classes.csv (once per head) or one name a line")
    p.add_argument("--views", type=int, default=None, help="test views (default: 4, or the run's train.eval_views)")
    p.add_argument("--which", default="latest", choices=["latest", "best"], help="a run directory's checkpoint")
    p.add_argument("overrides", nargs="*", help="model fields an official checkpoint's shapes cannot tell, e.g. "
                   "model.fusion_layer=8")
    p.set_defaults(func=cmd_predict)

    p = add_parser("notebooks", help="write the six notebooks (clean, no outputs) into DIR to open in JupyterLab")
    p.add_argument("--out", required=True, help="folder to write them into")
    p.add_argument("--force", action="store_true", help="overwrite copies there that were edited")
    p.set_defaults(func=cmd_notebooks)
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the other arguments, the dotted overrides): overrides found anywhere, and everything after `--`."""
    if "--" in argv:
        cut = argv.index("--")
        options, overrides = split_overrides(argv[:cut])
        return options, overrides + argv[cut + 1:]
    return [a for a in argv if not OVERRIDE.match(a)], [a for a in argv if OVERRIDE.match(a)]


def one_line(err: BaseException) -> str:
    """An error as one line naming what it is about (an OSError's file, its reason)."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror.lower()}"
        if err.errno == errno.ENOSPC:
            text += " (free some space and run the same command again: finished work is kept)"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def guarded(command: str, job: Callable[[], object], debug: bool = False) -> int:
    """Run a command's job; its exit status, with one line on stderr for an error (the traceback with `debug`)."""
    prefix = f"mbt {command}:"
    try:
        job()
        return 0
    except KeyboardInterrupt as err:  # training checkpointed first (TrainingInterrupted says where)
        if debug:
            traceback.print_exc()
        print(f"{prefix} {err or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    except USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        print(f"{prefix} {one_line(err)}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as err:  # a bug: say so, and where to get the traceback for a report
        if debug:
            traceback.print_exc()
        print(f"{prefix} internal error: {type(err).__name__}: {one_line(err)} (run again with --debug for the "
              f"traceback)", file=sys.stderr)
        return INTERNAL_ERROR


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line, the dotted overrides gathered from wherever they stand."""
    options, overrides = split_overrides(argv)
    parser = build_parser()
    args = parser.parse_args(options)
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"mbt {args.command} takes no overrides: {' '.join(overrides)}")
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `mbt` console script."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    status = guarded(args.command, lambda: args.func(args), args.debug)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
