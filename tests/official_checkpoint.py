"""Checkpoints in the official Scenic MBT format, written by the tests: the official parameter names and layout
(`/`-joined paths under `param/` in an npz, or a Flax msgpack tree under `params` or `optimizer/target`), with
the `_spec` / `clsspec` names of some released checkpoints on request."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from mbt_core import MBT, MBTConfig, dummy_inputs


def released_names(key: str) -> str:
    """A parameter path as some released checkpoints spell it (`_spec`, `clsspec`)."""
    return key.replace("_spectrogram", "_spec").replace("clsspectrogram", "clsspec")


def random_params(config: MBTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Flat `/`-joined parameters of `config` with every leaf random (a zero head would score every class alike)."""
    params = MBT(config).init(jax.random.PRNGKey(seed), dummy_inputs(config, 1), train=False)["params"]
    rng = np.random.default_rng(seed)
    return {"/".join(k): (np.asarray(v) + 0.3 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in flatten_dict(params).items()}


def write_official(path: str | Path, flat: dict[str, np.ndarray], route: tuple[str, ...] = ("optimizer", "target"),
                   rename=lambda key: key) -> Path:
    """Write flat parameters as an official checkpoint: `.npz` (under `param/`) or msgpack (under `route`)."""
    path = Path(path)
    flat = {rename(k): v for k, v in flat.items()}
    if path.suffix == ".npz":
        np.savez(path, **{f"param/{k}": v for k, v in flat.items()})
        return path
    tree = unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    for key in reversed(route):
        tree = {key: tree}
    path.write_bytes(serialization.msgpack_serialize(tree))
    return path
