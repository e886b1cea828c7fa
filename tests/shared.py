"""Locate the read-only shared material (`MBT_SHARED`, default `<repo root>/../shared`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """The shared folder: env `MBT_SHARED`, else the folder beside the repository."""
    return Path(os.environ.get("MBT_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under the shared folder; fails under CI and skips elsewhere when it is missing."""
    path = shared_root().joinpath(*parts)
    if not path.exists():
        message = f"shared material not found: {path} (set MBT_SHARED to the shared/ folder)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
