"""Find or build the etcd and kube-apiserver binaries the local control plane runs.

controller-runtime's envtest convention: ``KUBEBUILDER_ASSETS`` names a folder that holds
``etcd`` and ``kube-apiserver``. Where it is unset we build both once with ``go`` from the Go
module proxy into a cache outside the repository, keyed by version, and reuse them.

Neither binary installs with a plain ``go install``: ``k8s.io/kubernetes`` replaces its staging
modules (``k8s.io/api`` and friends) with local folders, and ``go install`` refuses a module with
``replace`` lines. So each is built from a tiny wrapper module that requires the real module and
re-points every staging module at its published ``v0.N.M`` tag. The list of staging modules is
read from the downloaded ``go.mod`` rather than typed here, so a version bump needs no edits.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.22.0"
CNI_PLUGINS_VERSION = "v1.9.0"
COREDNS_VERSION = "v1.12.4"
NODE_BINARIES = ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl")
CNI_PLUGINS = ("main/bridge", "main/loopback", "ipam/host-local", "meta/portmap")

__all__ = [
    "ETCD_VERSION",
    "KUBERNETES_VERSION",
    "AssetError",
    "Assets",
    "build_go_source",
    "cache_root",
    "ensure_assets",
    "ensure_go_tool",
    "ensure_helm",
    "ensure_node_assets",
]


class AssetError(RuntimeError):
    """The binaries could not be found or built; the message says which command failed."""


@dataclass(frozen=True)
class Assets:
    etcd: Path
    kube_apiserver: Path


def cache_root() -> Path:
    """The tool cache, outside any repository: ``$AIJOBS_CACHE`` or ``$XDG_CACHE_HOME/aijobs``."""
    explicit = os.environ.get("AIJOBS_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "aijobs"


def _from_env() -> Assets | None:
    folder = os.environ.get("KUBEBUILDER_ASSETS")
    if not folder:
        return None
    assets = Assets(Path(folder) / "etcd", Path(folder) / "kube-apiserver")
    missing = [str(p) for p in (assets.etcd, assets.kube_apiserver) if not p.is_file()]
    if missing:
        raise AssetError(f"KUBEBUILDER_ASSETS={folder} lacks: {', '.join(missing)}")
    return assets


def ensure_assets(*, log=print) -> Assets:  # type: ignore[no-untyped-def]
    """Return usable binaries, building the missing ones (minutes the first time, then free)."""
    found = _from_env()
    if found is not None:
        return found
    folder = cache_root() / "kubebuilder-assets" / f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"
    assets = Assets(folder / "etcd", folder / "kube-apiserver")
    if not assets.etcd.is_file():
        _build_etcd(folder, log)
    if not assets.kube_apiserver.is_file():
        _build_kube_apiserver(folder, log)
    return assets


def _go(args: list[str], cwd: Path, log) -> str:  # type: ignore[no-untyped-def]
    go = shutil.which("go")
    if go is None:
        raise AssetError(
            "`go` is not on PATH: install Go, or set KUBEBUILDER_ASSETS to a folder holding "
            "etcd and kube-apiserver (for example from `setup-envtest use`)"
        )
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0", GOWORK="off")
    log(f"  $ go {' '.join(args)}")
    proc = subprocess.run([go, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(f"`go {' '.join(args)}` failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _wrapper(path: Path, requires: str, replaces: list[tuple[str, str]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    lines = ["module aijobs.local/assets", "", "go 1.24.0", ""]
    lines += [f"require {requires}", ""]
    lines += [f"replace {mod} => {mod} {ver}" for mod, ver in replaces]
    (path / "go.mod").write_text("\n".join(lines) + "\n")
    (path / "go.sum").touch()


def _timed_build(name: str, folder: Path, work: Path, pkg: str, ldflags: str, log) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    log(f"building {name} into {folder} (first time only; about 10-25 minutes on 2 cores)")
    _go(["get", pkg], work, log)
    tmp = folder / f".{name}.partial"
    _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), pkg.split("@")[0]], work, log)
    tmp.rename(folder / name)  # atomic: a killed build never leaves a half binary in place
    log(f"built {name} in {time.monotonic() - started:.0f}s")


def _build_etcd(folder: Path, log) -> None:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "build-etcd"
    _wrapper(work, f"go.etcd.io/etcd/server/v3 {ETCD_VERSION}", [])
    _timed_build("etcd", folder, work, f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}", "-s -w", log)


def staging_replaces(gomod_text: str, version: str) -> list[tuple[str, str]]:
    """Every ``k8s.io/X => ./staging/...`` line of kubernetes' go.mod, as ``(X, v0.N.M)``."""
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod_text, re.MULTILINE)
    if not staging:
        raise AssetError("no staging replace lines found in k8s.io/kubernetes go.mod")
    tag = "v0." + version.removeprefix("v1.")
    return [(mod, tag) for mod in staging]


def _kubernetes_wrapper(folder: Path, log) -> Path:  # type: ignore[no-untyped-def]
    work = folder / "build-kube-apiserver"
    if (work / "go.mod").is_file() and "k8s.io/kubernetes" in (work / "go.mod").read_text():
        return work
    work.mkdir(parents=True, exist_ok=True)
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], work, log))
    replaces = staging_replaces(Path(info["GoMod"]).read_text(), KUBERNETES_VERSION)
    _wrapper(work, f"k8s.io/kubernetes {KUBERNETES_VERSION}", replaces)
    return work


def _kubernetes_ldflags() -> str:
    minor = KUBERNETES_VERSION.split(".")[1]
    return " ".join(
        [
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
            "-X k8s.io/component-base/version.gitMajor=1",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
        ]
    )


def _build_kube_apiserver(folder: Path, log) -> None:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    work = _kubernetes_wrapper(folder, log)
    pkg = f"k8s.io/kubernetes/cmd/kube-apiserver@{KUBERNETES_VERSION}"
    _timed_build("kube-apiserver", folder, work, pkg, _kubernetes_ldflags(), log)


def ensure_node_assets(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The folder holding what a single node adds to the control plane: ``kubelet``,
    ``kube-controller-manager``, ``kube-scheduler``, ``kube-proxy``, ``kubectl``, ``coredns``, ``pause`` and
    ``cni/`` (bridge, loopback, host-local, portmap). ``$AIJOBS_NODE_ASSETS`` names one made
    elsewhere; otherwise each is built once from the Go module proxy (kubelet and friends from
    the same wrapper module as kube-apiserver: a few minutes each on 2 cores, cold)."""
    explicit = os.environ.get("AIJOBS_NODE_ASSETS")
    folder = Path(explicit) if explicit else cache_root() / "node-assets" / f"k8s-{KUBERNETES_VERSION}"
    wanted = [*NODE_BINARIES, "coredns", "pause", *(f"cni/{p.split('/')[1]}" for p in CNI_PLUGINS)]
    missing = [name for name in wanted if not (folder / name).is_file()]
    if explicit and missing:
        raise AssetError(f"AIJOBS_NODE_ASSETS={explicit} lacks: {', '.join(missing)}")
    if not missing:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    plane = ensure_assets(log=log).kube_apiserver.parent
    work = _kubernetes_wrapper(plane, log)
    for name in NODE_BINARIES:
        if not (folder / name).is_file():
            pkg = f"k8s.io/kubernetes/cmd/{name}@{KUBERNETES_VERSION}"
            _timed_build(name, folder, work, pkg, _kubernetes_ldflags(), log)
    cni = folder / "cni"
    cni.mkdir(exist_ok=True)
    if any(not (cni / p.split("/")[1]).is_file() for p in CNI_PLUGINS):
        pkgs = [
            f"github.com/containernetworking/plugins/plugins/{p}@{CNI_PLUGINS_VERSION}" for p in CNI_PLUGINS
        ]
        _go_install(pkgs, cni, log)
    if not (folder / "coredns").is_file():
        _go_install([f"github.com/coredns/coredns@{COREDNS_VERSION}"], folder, log)
    if not (folder / "pause").is_file():
        _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(folder / "pause"), "."], PAUSE_SOURCE, log)
    return folder


PAUSE_SOURCE = Path(__file__).parent / "pause"


def _go_install(pkgs: list[str], target: Path, log, ldflags: str = "-s -w") -> None:  # type: ignore[no-untyped-def]
    """``go install`` of modules without replace lines, binaries straight into ``target``."""
    go = shutil.which("go")
    if go is None:
        raise AssetError("`go` is not on PATH: install Go, or set AIJOBS_HELM / AIJOBS_NODE_ASSETS")
    started = time.monotonic()
    env = dict(os.environ, GOBIN=str(target), CGO_ENABLED="0", GOWORK="off")
    log(f"  $ go install {' '.join(pkgs)}")
    proc = subprocess.run(
        [go, "install", "-trimpath", "-ldflags", ldflags, *pkgs], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssetError(f"`go install {' '.join(pkgs)}` failed:\n{proc.stderr[-4000:]}")
    log(f"built {', '.join(p.rsplit('/', 1)[-1] for p in pkgs)} in {time.monotonic() - started:.0f}s")


def ensure_go_tool(  # type: ignore[no-untyped-def]
    name: str,
    version: str,
    package: str,
    *,
    env: str | None = None,
    ldflags: str = "-s -w",
    installed_as: str | None = None,
    log=print,
) -> Path:
    """A tool built once with ``go install PACKAGE@VERSION`` (a module without replace lines)
    into ``tools/NAME-VERSION/NAME`` of the tool cache; ``$ENV`` names a binary to use instead.
    ``installed_as``: the name ``go install`` gives the binary when it is not ``name`` (a
    package called ``cmd``)."""
    explicit = os.environ.get(env) if env else None
    if explicit:
        return Path(explicit)
    target = cache_root() / "tools" / f"{name}-{version}"
    binary = target / name
    if not binary.is_file():
        target.mkdir(parents=True, exist_ok=True)
        log(f"building {name} {version} into {target} (first time only; a few minutes)")
        _go_install([f"{package}@{version}"], target, log, ldflags)
        installed = target / (installed_as or name)
        if not installed.is_file():
            raise AssetError(f"`go install {package}@{version}` left no binary in {target}")
        installed.rename(binary)
    return binary


def build_go_source(  # type: ignore[no-untyped-def]
    name: str, source: Path, *, prefix: str | None = None, flags: tuple[str, ...] = (), log=print
) -> Path:
    """A small Go program kept in this repository (``source`` holds go.mod, go.sum, main.go),
    built once per version of its source: the folder's name carries a hash of those files, so an
    edit or a new pin builds a new binary. Built to a partial name and renamed: a killed build
    never leaves half a binary in place."""
    digest = hashlib.sha256(
        b"".join((source / part).read_bytes() for part in ("go.mod", "go.sum", "main.go"))
    ).hexdigest()[:12]
    target = cache_root() / "tools" / f"{prefix or name}-{digest}"
    binary = target / name
    if not binary.is_file():
        target.mkdir(parents=True, exist_ok=True)
        log(f"building {name} into {target} (first time only)")
        partial = target / f".{name}.partial"
        _go(["build", *flags, "-trimpath", "-ldflags", "-s -w", "-o", str(partial), "."], source, log)
        partial.rename(binary)
    return binary


def ensure_helm(*, log=print) -> Path:  # type: ignore[no-untyped-def]
    """helm: ``$AIJOBS_HELM`` if set, else built once with ``go install`` (helm's module has no
    replace lines) into the tool cache."""
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    return ensure_go_tool(
        "helm", HELM_VERSION, "helm.sh/helm/v3/cmd/helm", env="AIJOBS_HELM", ldflags=ldflags, log=log
    )


def main() -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        assets = ensure_assets(log=log)
        if "--helm" in sys.argv:
            ensure_helm(log=log)
        if "--node" in sys.argv:
            ensure_node_assets(log=log)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(assets.kube_apiserver.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
