"""KEDA on the single node, built from the Go module proxy: the autoscaler the chart's
``worker.autoscaling`` asks for, proven live (``tests/cluster/test_autoscaling.py``).

KEDA's module has ``replace`` lines, so ``go install`` refuses it. As with kube-apiserver, the
module's zip is fetched with ``go mod download`` and its two commands are built inside a copy
of it: ``cmd/operator`` (``keda``: the controller and its scalers) and ``cmd/adapter``
(``keda-adapter``: the ``external.metrics.k8s.io`` API server the HPA reads).

KEDA then runs as pods, the way its own ``config/minimal`` installs it, so that its operator
reads the queue depth through cluster DNS and Services (a process on this machine could not
resolve ``*.svc`` names), and its certificate rotation makes the adapter's serving certificate
and the APIService's CA bundle itself. There is no registry: both binaries go into one
``FROM scratch``-like image made with ``docker import``, which the node loads like the others.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

from .assets import AssetError, _go, cache_root

KEDA_VERSION = "v2.21.0"  # needs Go >= 1.26; v2.21.1 needs Go 1.27
MODULE = "github.com/kedacore/keda/v2"
IMAGE = f"aijobs.local/keda:{KEDA_VERSION.removeprefix('v')}"
NAMESPACE = "keda"
# KEDA's images run as an unprivileged user; ours has no /etc/passwd, so it is given by number.
RUN_AS = 65532
BINARIES = {"keda": "./cmd/operator", "keda-adapter": "./cmd/adapter"}

__all__ = [
    "IMAGE",
    "KEDA_VERSION",
    "NAMESPACE",
    "ensure_keda",
    "ensure_keda_image",
    "keda_manifests",
    "keda_module",
]


def _folder() -> Path:
    return cache_root() / "tools" / f"keda-{KEDA_VERSION}"


def keda_module(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The unpacked module (read-only, in Go's module cache): its CRDs and install manifests."""
    work = _folder()
    work.mkdir(parents=True, exist_ok=True)
    info = json.loads(_go(["mod", "download", "-json", f"{MODULE}@{KEDA_VERSION}"], work, log))
    if info.get("Error") or not info.get("Dir"):
        raise AssetError(f"go mod download {MODULE}@{KEDA_VERSION}: {info.get('Error')}")
    return Path(info["Dir"])


def ensure_keda(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The folder holding ``keda`` and ``keda-adapter``, built once (tens of minutes on 2 cores:
    the operator links every scaler's cloud SDK)."""
    folder = _folder()
    if all((folder / name).is_file() for name in BINARIES):
        return folder
    module = keda_module(log=log)
    source = folder / "src"
    if not (source / "go.mod").is_file():  # the module cache is read-only; go build writes go.sum
        shutil.copytree(module, source)
        for path in [source, *source.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    ldflags = f"-s -w -X={MODULE}/version.Version={KEDA_VERSION.removeprefix('v')}"
    for name, pkg in BINARIES.items():
        if (folder / name).is_file():
            continue
        started = time.monotonic()
        log(f"building {name} {KEDA_VERSION} into {folder} (first time only)")
        partial = folder / f".{name}.partial"
        _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), pkg], source, log)
        partial.rename(folder / name)  # a killed build never leaves a half binary in place
        log(f"built {name} in {time.monotonic() - started:.0f}s")
    return folder


def image_tar(binaries: Path) -> bytes:
    """A root filesystem with the two binaries and a writable ``/tmp``, as a tar."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
        for name in BINARIES:
            info = tar.gettarinfo(str(binaries / name), arcname=name)
            info.uid = info.gid = 0
            info.mode = 0o755
            with (binaries / name).open("rb") as handle:
                tar.addfile(info, handle)
    return out.getvalue()


def ensure_keda_image(*, log=print) -> str:  # type: ignore[no-untyped-def]
    """``IMAGE`` in the local Docker engine, imported from the built binaries."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0:
        return IMAGE
    binaries = ensure_keda(log=log)
    log(f"importing {IMAGE} into Docker")
    proc = subprocess.run(
        ["docker", "import", "--change", f"USER {RUN_AS}:{RUN_AS}", "-", IMAGE],
        input=image_tar(binaries),
        capture_output=True,
    )
    if proc.returncode != 0:
        raise AssetError(f"docker import {IMAGE}: {proc.stderr.decode()[-2000:]}")
    return IMAGE


def keda_manifests(kustomized: str, image: str = IMAGE) -> list[dict[str, Any]]:
    """KEDA's ``config/minimal`` (rendered by ``kubectl kustomize``) with our image, never
    pulled, and a numeric user for pods that must not run as root. Nothing is opened to
    anonymous callers: the node's API server proxies external-metrics requests with its
    front-proxy client certificate (:mod:`aijobs_dev.controlplane.pki`), so the adapter learns
    that the HPA controller asks, and KEDA's own RBAC lets it."""
    objects = [doc for doc in yaml.safe_load_all(kustomized) if doc]
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        pod.setdefault("securityContext", {})["runAsUser"] = RUN_AS
        for container in pod["containers"]:
            container["image"] = image
            container["imagePullPolicy"] = "Never"
    return objects


def render_minimal(module: Path, kubectl: Path | str = "kubectl") -> str:
    """``kubectl kustomize`` of KEDA's ``config/minimal``: CRDs, namespace, RBAC, operator,
    metrics API server and its APIService, without the admission webhooks."""
    proc = subprocess.run(
        [str(kubectl), "kustomize", str(module / "config" / "minimal")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssetError(f"kubectl kustomize {module / 'config' / 'minimal'}: {proc.stderr[-2000:]}")
    return proc.stdout


def main() -> int:
    """``python -m aijobs_dev.controlplane.keda``: build KEDA's two binaries ahead, as ``make
    tools`` builds the node's, so that the first ``make test`` does not spend its half hour
    inside ``tests/cluster/test_autoscaling.py``. Prints their folder."""

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        folder = ensure_keda(log=log)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
