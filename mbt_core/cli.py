"""The `mbt` command: one subcommand per job, each a thin call into a tested module."""
from __future__ import annotations

import argparse
import ast
import sys

from mbt_core.config import FUSIONS, PRESETS, MBTConfig


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings to a dict; values parsed as Python literals where they are ones."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"override {pair!r}: expected key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def format_flops_table(config: MBTConfig) -> str:
    """Both FLOP conventions over L_f = 0..L side by side, with the bottleneck/cross-attention finding."""
    from mbt_core.flops import flops_table

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `mbt` subcommand."""
    parser = argparse.ArgumentParser(prog="mbt", description="Multimodal Bottleneck Transformer suite")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flops", help="print GFLOPs over L_f for every fusion strategy, both conventions")
    p.add_argument("--preset", default="paper-b16", choices=sorted(PRESETS))
    p.add_argument("--spec-seconds", type=float, default=None, help="spectrogram length t (the paper's Fig. 3 used 4)")
    p.add_argument("overrides", nargs="*", help="MBTConfig field=value overrides")
    p.set_defaults(func=cmd_flops)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `mbt` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:
        sys.exit(f"mbt {args.command}: {err}")


if __name__ == "__main__":
    main()
