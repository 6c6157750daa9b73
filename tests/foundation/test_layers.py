"""The layers the README describes hold: the shared contract (`aijobs/`) imports none of the
parts built on it, nothing at run time imports the developer tools, and the wheel the images
install ships without them."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {
    "aijobs": ROOT / "aijobs",
    "operator": ROOT / "operator",
    "services": ROOT / "services",
    "gpu_worker": ROOT / "gpu_worker",
}


def _imports(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_contract_imports_no_part_built_on_it_and_no_web_framework() -> None:
    forbidden = {"aijobs_services", "aijobs_operator", "aijobs_worker", "fastapi", "sqlalchemy", "torch"}
    bad = {
        path: names & forbidden
        for path, names in _imports(ROOT / "aijobs").items()
        if names & forbidden and path != "aijobs/cli.py"  # the command starts each part, lazily
    }
    assert bad == {}


@pytest.mark.parametrize("layer", sorted(RUNTIME))
def test_nothing_that_runs_in_an_image_imports_the_developer_tools(layer: str) -> None:
    bad = [
        path
        for path, names in _imports(RUNTIME[layer]).items()
        if "aijobs_dev" in names and path != "aijobs/cli.py"  # the dev commands, imported lazily
    ]
    assert bad == []


def test_the_runtime_wheel_ships_without_the_developer_tools(tmp_path: Path) -> None:
    """Built as the Dockerfile builds it: from the runtime folders only."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in (*RUNTIME.values(), ROOT / "crds"):
        shutil.copytree(folder, tmp_path / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    # Without isolation where the environment can build it (no download); Python >= 3.12 venvs
    # have no setuptools, and pip then fetches the build backend as it would for a user.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", "out", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [wheel] = (tmp_path / "out").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("aijobs_dev/")]
    for module in ("aijobs/wire/client.py", "aijobs_operator/core.py", "aijobs_services/kit/outbound.py"):
        assert module in names
