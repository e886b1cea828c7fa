"""What the fusion explorer reads from a sweep and adds to it: rollout overlays of its runs, one more setting
trained in place, and the command line that adds a setting.

An overlay entry is a dict {"frame": the clip's middle frame (uint8), "map": the RGB rollout of all output CLS
tokens summed over frames (Fig. 6) on the (h, w) patch grid}; the widgets blend it at the opacity a person
picks (`overlay.frame_triptych`). `sweep_overlays` precomputes entries for every run and clip (for pages);
`sweep_overlay_source` computes them on demand, so a setting trained after the explorer opened gets one too.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from mbt_core.analysis.overlay import clip_rollout, summed_map
from mbt_core.config import FUSIONS
from mbt_core.experiment import load_run_split, sweep
from mbt_core.media.images import to_uint8
from mbt_core.run_dir import read_config, read_results
from widgets.rollout_stepper import clip_example

Setting = tuple[str, int, int]  # (fusion, L_f, B)


def overlay_entry(config: Any, params: Any, cached: Any, clip: int, where: str = "split") -> dict[str, np.ndarray]:
    """One clip's overlay entry: its middle frame and the RGB rollout map summed over frames."""
    example, _ = clip_example(cached, clip, where)
    frames = example["rgb"]
    rolled = clip_rollout(config, params, example)["fused_maps"]["rgb"]
    return {"frame": to_uint8(frames[len(frames) // 2]), "map": summed_map(rolled)}


def setting_of(row: dict[str, Any]) -> Setting:
    """The (fusion, L_f, B) of a results row."""
    return row["fusion"], row["fusion_layer"], row["num_bottlenecks"]


def sweep_overlays(results: str | Path | Sequence[dict[str, Any]], clips: Sequence[int], split: str = "test",
                   which: str = "latest", progress: bool = True) -> dict[tuple, dict[str, np.ndarray]]:
    """Overlay entries of `clips` for every run of a sweep, keyed (fusion, L_f, B, clip)."""
    rows = read_results(results) if isinstance(results, (str, Path)) else results
    entries = {}
    for row in tqdm(rows, desc="rollout overlays", unit="run", disable=not progress):
        run, params, cached = load_run_split(row["run_dir"], split, which)
        for clip in clips:
            entries[(*setting_of(row), clip)] = overlay_entry(run.model, params, cached, clip,
                                                              f"{row['run_dir']} split {split!r}")
    return entries


def sweep_overlay_source(sweep_dir: str | Path, split: str = "test",
                         which: str = "latest") -> Callable[[str, int, int, Any], dict | None]:
    """A function (fusion, L_f, B, clip) -> overlay entry of that setting's run in the sweep now, or None."""
    loaded: dict[Setting, tuple] = {}
    entries: dict[tuple, dict] = {}

    def source(fusion: str, fusion_layer: int, num_bottlenecks: int, clip: Any) -> dict | None:
        setting = (fusion, fusion_layer, num_bottlenecks)
        if setting not in loaded:
            row = next((r for r in read_results(sweep_dir) if setting_of(r) == setting), None)
            if row is None:
                return None
            loaded[setting] = (*load_run_split(row["run_dir"], split, which), row["run_dir"])
        if (*setting, clip) not in entries:
            run, params, cached, run_dir = loaded[setting]
            entries[(*setting, clip)] = overlay_entry(run.model, params, cached, clip, f"{run_dir} split {split!r}")
        return entries[(*setting, clip)]
    return source


def train_setting(sweep_dir: str | Path, fusion: str, fusion_layer: int, num_bottlenecks: int,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate one more setting into a sweep with the configuration of its runs (`experiment.sweep`;
    the settings already there are not trained again); the sweep's rows afterwards."""
    rows = read_results(sweep_dir)
    if not rows:
        raise ValueError(f"{sweep_dir}: the sweep has no runs whose configuration a new setting could share")
    base = read_config(rows[0]["run_dir"])
    settings = list(dict.fromkeys([setting_of(r) for r in rows] + [(fusion, fusion_layer, num_bottlenecks)]))
    return sweep(base, sweep_dir, settings, progress=progress)


def _relative(path: str | Path, start: Path) -> str:
    """`path` relative to `start` when it lies below it, else its last two parts (never this machine's absolute path)."""
    path = Path(os.path.abspath(path))  # normalised: no '..' left
    try:
        return path.relative_to(start).as_posix() or "."
    except ValueError:
        return Path(*path.parts[-2:]).as_posix()


def add_command(sweep_dir: str | Path, rows: Sequence[dict[str, Any]], setting: Setting) -> str:
    """The `mbt sweep` line that adds `setting` to a sweep, run from the folder holding the sweep.

    `mbt sweep` trains the product fusions x L_f x B (B only for bottlenecks, the first B for the others) and
    skips the settings already evaluated; the line's grid covers the sweep's settings and the new one."""
    sweep_dir = Path(os.path.abspath(sweep_dir))
    settings = [setting_of(r) for r in rows] + [setting]
    fusions = [f for f in FUSIONS if any(s[0] == f for s in settings)]
    layers = sorted({s[1] for s in settings})
    others = [s[2] for s in settings if s[0] != "bottleneck"]
    first = others[0] if others else setting[2]
    bottlenecks = [first] + sorted({s[2] for s in settings if s[0] == "bottleneck"} - {first})
    root = sweep_dir.parent
    config = _relative(rows[0]["run_dir"], root) if rows else "synthetic-tiny"
    data = read_config(rows[0]["run_dir"]).data.dir if rows else None
    words = ["mbt", "sweep", "--config", config, "--data", _relative(data, root) if data else "DATA_DIR",
             "--out", _relative(sweep_dir, root), "--fusions", *fusions,
             "--fusion-layers", *map(str, layers), "--bottlenecks", *map(str, bottlenecks)]
    return " ".join(shlex.quote(w) for w in words)

