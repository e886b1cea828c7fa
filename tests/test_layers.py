"""The layers of docs/architecture.md, read from every module's imports (ast): none imports a layer above it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layer of a module: the longest of these prefixes it starts with.
LAYER_OF = {
    "mbt_core.config": "config", "mbt_core.recipes": "config", "mbt_core.run_dir": "config",
    "mbt_core.package_files": "config", "mbt_core.atomic_files": "config", "mbt_core.worker_processes": "config",
    "mbt_core.media": "media",
    "mbt_core.datasets": "datasets",
    "mbt_core.model": "model",
    "mbt_core.data": "data",
    "mbt_core.train": "train",
    "mbt_core.analysis": "analysis",
    "mbt_core.experiment": "runs", "mbt_core.suite": "runs", "mbt_core.cli": "runs", "mbt_core.predict": "runs",
    "mbt_core": "api",  # the package's __init__: the public names
    "widgets": "widgets",
}
_BELOW_TRAIN = {"config", "media", "datasets", "model", "data"}
# What each layer may import (itself included). The model and data layers never see each other.
ALLOWED = {
    "config": {"config"},
    "media": {"config", "media"},
    "datasets": {"config", "media", "datasets"},
    "model": {"config", "model"},
    "data": {"config", "media", "datasets", "data"},
    "train": _BELOW_TRAIN | {"train"},
    "analysis": _BELOW_TRAIN | {"train", "analysis"},
    "api": _BELOW_TRAIN,
    "runs": _BELOW_TRAIN | {"train", "analysis", "runs", "api"},
    "widgets": _BELOW_TRAIN | {"train", "analysis", "runs", "api", "widgets"},
}


def layer(module: str) -> str | None:
    """The layer of a dotted module name of the project (None outside it)."""
    for prefix in sorted(LAYER_OF, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYER_OF[prefix]
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    """Dotted name of a source file under `root` (a package's `__init__.py` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool, root: Path = ROOT) -> set[str]:
    """Project modules a source imports anywhere (functions included); `from a import b` is a.b when b is a module."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if _is_module(full, root) else base)
    return {name for name in found if layer(name) is not None}


def violations(imports: dict[str, set[str]]) -> list[str]:
    """One line per import that reaches a layer its module may not import."""
    bad = []
    for module, targets in sorted(imports.items()):
        own = layer(module)
        for target in sorted(targets):
            if layer(target) not in ALLOWED[own]:
                bad.append(f"{module} ({own}) imports {target} ({layer(target)})")
    return bad


def project_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Every project module under `root` (mbt_core/, widgets/) and the project modules it imports."""
    out = {}
    for path in sorted([*root.glob("mbt_core/**/*.py"), *root.glob("widgets/**/*.py")]):
        name = module_name(path, root)
        out[name] = imported_modules(path.read_text(), name, path.name == "__init__.py", root)
    return out


def test_every_module_has_a_layer():
    unplaced = [m for m in project_imports() if layer(m) is None or layer(m) not in ALLOWED]
    assert not unplaced, f"add these modules to LAYER_OF (docs/architecture.md): {unplaced}"


def test_no_module_imports_a_layer_above_it():
    assert violations(project_imports()) == []


def test_the_listing_shows_the_layers():
    packages = {p.name for p in (ROOT / "mbt_core").iterdir() if (p / "__init__.py").is_file()}
    assert {"media", "model", "data", "train", "analysis", "datasets"} <= packages
    for package in ("media", "model", "data", "train", "analysis"):
        assert layer(f"mbt_core.{package}") == package


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_catches_violations_in_a_synthetic_tree(tmp_path):
    _write(tmp_path, {
        "mbt_core/__init__.py": "",
        "mbt_core/config.py": "",
        "mbt_core/model/__init__.py": "",
        "mbt_core/model/model.py": "from mbt_core.config import X\nfrom mbt_core.data import tokenise\n",
        "mbt_core/data/__init__.py": "",
        "mbt_core/data/tokenise.py": "from mbt_core.media import audio\n",
        "mbt_core/data/cache.py": "def f():\n    from ..model import model\n",  # lazy and relative
        "mbt_core/media/__init__.py": "",
        "mbt_core/media/audio.py": "import mbt_core.experiment\n",
        "mbt_core/experiment.py": "from widgets import explorer\n",
        "widgets/__init__.py": "", "widgets/explorer.py": "from mbt_core import MBT\n",
    })
    found = violations(project_imports(tmp_path))
    assert found == [
        "mbt_core.data.cache (data) imports mbt_core.model.model (model)",
        "mbt_core.experiment (runs) imports widgets.explorer (widgets)",
        "mbt_core.media.audio (media) imports mbt_core.experiment (runs)",
        "mbt_core.model.model (model) imports mbt_core.data.tokenise (data)",
    ]


@pytest.mark.parametrize("source, expected", [
    ("from mbt_core.media import audio, video", {"mbt_core.media.audio", "mbt_core.media.video"}),
    ("from mbt_core.config import MBTConfig", {"mbt_core.config"}),
    ("from mbt_core import MBT", {"mbt_core"}),
    ("import numpy\nfrom . import flops", {"mbt_core.model.flops"}),
])
def test_imports_resolve_to_modules(source, expected):
    assert imported_modules(source, "mbt_core.model.model", False) == expected


def test_the_architecture_doc_lists_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for path in sorted((ROOT / "mbt_core").glob("**/*.py")):
        if path.name != "__init__.py":
            assert path.stem in doc, f"docs/architecture.md does not list {path.relative_to(ROOT)}"
    for package in sorted(p for p in (ROOT / "mbt_core").iterdir() if (p / "__init__.py").is_file()):
        assert f"{package.name}/" in doc, f"docs/architecture.md does not list {package.name}/"
