"""kube-score, the static checker of Kubernetes objects, built once into the tool cache.

The chart's tests run it on every render so that a scheduling, probe or resource gap shows up
as a finding, not as an outage. Like helm, it is built with ``go install`` from the Go module
proxy at a pinned version (its module has no replace lines); ``$AIJOBS_KUBE_SCORE`` names a
binary to use instead.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aijobs_dev.controlplane.assets import AssetError, ensure_go_tool

KUBE_SCORE_VERSION = "v1.20.0"

__all__ = ["KUBE_SCORE_VERSION", "Finding", "ensure_kube_score", "score"]


@dataclass(frozen=True)
class Finding:
    """One check that did not pass on one object: ``grade`` is ``CRITICAL`` or ``WARNING``."""

    kind: str
    name: str
    check: str
    grade: str
    comments: tuple[str, ...]


def ensure_kube_score(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    return ensure_go_tool(
        "kube-score",
        KUBE_SCORE_VERSION,
        "github.com/zegl/kube-score/cmd/kube-score",
        env="AIJOBS_KUBE_SCORE",
        log=log,
    )


# kube-score's numeric grades (scorecard.Grade): 1 critical, 5 warning, 7 almost OK, 10 all OK.
_GRADES = {1: "CRITICAL", 5: "WARNING"}


def score(binary: Path, manifests: str, *, ignore: Iterable[str] = ()) -> list[Finding]:
    """The failed checks of kube-score on ``manifests`` (a multi-document YAML stream), less the
    checks named in ``ignore``."""
    flags = [arg for check in sorted(ignore) for arg in ("--ignore-test", check)]
    proc = subprocess.run(
        [str(binary), "score", "--output-format", "json", *flags, "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # kube-score exits 1 when it found a critical, 0 otherwise; anything else is its own failure.
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise AssetError(f"kube-score failed ({proc.returncode}): {proc.stderr[-2000:]}")
    findings = []
    for obj in json.loads(proc.stdout):
        for check in obj["checks"]:
            grade = _GRADES.get(check["grade"])
            if grade is None or check.get("skipped"):
                continue
            comments = tuple(
                f"{c.get('path', '')}: {c['summary']}".lstrip(": ") for c in check.get("comments") or []
            )
            findings.append(
                Finding(
                    obj["type_meta"]["kind"],
                    obj["object_meta"]["name"],
                    check["check"]["id"],
                    grade,
                    comments,
                )
            )
    return findings
