"""The files the package ships beside its code: the data cards and the notebooks.

In an installed wheel they lie inside the package (`mbt_core/data_cards/`, `mbt_core/notebooks/`, put
there by pyproject's `package-dir`); in a source checkout, editable installs included, they are the
repository's top-level `data_cards/` and `notebooks/` folders.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = ("data_cards", "notebooks")


def shipped_dir(name: str) -> Path:
    """The folder of shipped files `name` (`data_cards` or `notebooks`), in a wheel or in a checkout."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped folder {name!r}; folders: {', '.join(SHIPPED)}")
    installed = Path(str(resources.files("mbt_core") / name))
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / name
