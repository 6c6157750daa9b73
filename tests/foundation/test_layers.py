"""The layers the README describes hold: the shared contract (`aijobs/`) imports none of the
parts built on it, nothing at run time imports the developer tools, and the wheel the images
install ships without them."""

from __future__ import annotations

import ast
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


def test_the_runtime_wheel_ships_without_the_developer_tools(runtime_wheel: Path) -> None:
    """Built as the Dockerfile builds it (tests/conftest.py): from the runtime folders only."""
    names = zipfile.ZipFile(runtime_wheel).namelist()
    assert not [n for n in names if n.startswith("aijobs_dev/")]
    for module in ("aijobs/wire/client.py", "aijobs_operator/core.py", "aijobs_services/kit/outbound.py"):
        assert module in names
