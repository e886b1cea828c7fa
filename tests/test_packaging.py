"""Packaging: conda and pip declare the same dependencies; CI runs exactly what README tells a user."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"])
    for extra in ("notebooks", "dev"):
        declared |= set(project["optional-dependencies"][extra])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"] and "pip" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_section) - {"-e ."} == declared
    assert "-e ." in pip_section


def test_ci_runs_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in ci if line and not line.startswith(("#", "set ", "cd ", "rm "))]
    assert commands, "CI runs nothing"
    for command in commands:
        assert command in readme, f"CI command not in README: {command}"
    assert re.search(r"^OPENBLAS_NUM_THREADS=1 pytest -q$", readme, re.M)


def test_console_script_and_packages_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["mbt"] == "mbt_core.cli:main"
    assert project["project"]["name"] == "mbt"
    assert {"mbt_core*", "widgets*"} <= set(project["tool"]["setuptools"]["packages"]["find"]["include"])


def test_every_documented_command_exists():
    from mbt_core.cli import build_parser
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^mbt ([a-z]+)", readme, re.M))
    assert documented and documented <= commands
    assert {"flops", "synth", "tokenise", "train", "evaluate", "sweep", "suite"} <= commands
