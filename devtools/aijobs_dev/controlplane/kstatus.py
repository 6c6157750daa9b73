"""kstatus, the status library of sigs.k8s.io/cli-utils, as a small command built once into the tool
cache.

Flux (a Kustomization with ``wait: true``), kpt and other appliers decide whether an object they
applied is healthy with kstatus: InProgress, Current or Failed. For a custom resource it reads
``observedGeneration`` and the ``Reconciling`` and ``Stalled`` conditions (then ``Ready``), so what
our conditions mean to those tools is what this library computes, not what we think it computes.
The command (``devtools/aijobs_dev/kstatus``) pins cli-utils in its ``go.mod``/``go.sum`` and is
built with ``go build`` from the Go module proxy, keyed by a digest of its sources;
``$AIJOBS_KSTATUS`` names a binary to use instead.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aijobs_dev.controlplane.assets import AssetError, build_go_source

CLI_UTILS_VERSION = "v0.37.2"
SOURCE = Path(__file__).resolve().parents[1] / "kstatus"

__all__ = ["CLI_UTILS_VERSION", "Verdict", "compute", "ensure_kstatus"]


@dataclass(frozen=True)
class Verdict:
    """kstatus's answer for one object: ``status`` is InProgress, Current, Failed or Terminating."""

    kind: str
    name: str
    status: str
    message: str


def ensure_kstatus(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    explicit = os.environ.get("AIJOBS_KSTATUS")
    if explicit:
        return Path(explicit)
    if f"sigs.k8s.io/cli-utils {CLI_UTILS_VERSION}" not in (SOURCE / "go.mod").read_text():
        raise AssetError(f"{SOURCE / 'go.mod'} does not pin sigs.k8s.io/cli-utils {CLI_UTILS_VERSION}")
    # -mod=readonly: the committed go.sum is the whole truth; the build never edits the repo.
    return build_go_source(
        "kstatus", SOURCE, prefix=f"kstatus-{CLI_UTILS_VERSION}", flags=("-mod=readonly",), log=log
    )


def compute(binary: Path, objects: str) -> list[Verdict]:
    """kstatus's answer for each object in ``objects`` (JSON: one object or a List, as
    ``kubectl get -o json`` prints them), in their order."""
    proc = subprocess.run([str(binary)], input=objects, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssetError(f"kstatus failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return [Verdict(**json.loads(line)) for line in proc.stdout.splitlines() if line.strip()]
