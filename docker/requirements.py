"""The requirements an image installs: the client's dependencies and those of the extras named,
read from pyproject.toml alone.

The Dockerfile installs them in a layer of their own, before the wheel, so that torch's several GB
are downloaded again only when a pin changes, not with every change to the code. Standard library
only: it runs on the bare Python base image.

    python3 requirements.py PYPROJECT EXTRA... > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from typing import Any


def requirements(pyproject: dict[str, Any], extras: list[str]) -> list[str]:
    """The base dependencies, then each extra's, once each and in order (an extra may repeat a
    pin another one has; an unknown extra is an error, never an image without its part)."""
    project = pyproject["project"]
    optional = project["optional-dependencies"]
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise SystemExit(f"no such extra in pyproject.toml: {', '.join(unknown)}")
    lines = [*project["dependencies"], *(line for name in extras for line in optional[name])]
    return list(dict.fromkeys(lines))


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    with open(argv[0], "rb") as file:
        pyproject = tomllib.load(file)
    print("\n".join(requirements(pyproject, argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
