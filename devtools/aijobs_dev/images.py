"""Build the project's images with the local Docker engine, from bases made on this machine.

    python -m aijobs_dev.images [--public-bases] [--tag 0.1.0]

No image registry is reachable from the machines this project is tested on, so the Dockerfile's
base (``PYTHON_IMAGE``, public ``python:3.11-slim-bookworm`` by default) is made here: a minimal
Debian bookworm from Debian's packages (``debootstrap --variant=minbase`` with python3 and its
venv module), imported into Docker once and reused. The machine's CA bundle goes into that base
so that the build's ``pip install`` trusts what this machine trusts. ``--public-bases`` builds
from the public bases instead, as users with a registry do.

Starts ``dockerd`` where none answers (root), and prints each image's size and build time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aijobs_dev.controlplane.assets import AssetError, cache_root

ROOT = Path(__file__).resolve().parents[2]
LOCAL_BASE = "aijobs-local/python:bookworm"
TARGETS = {"aijobs": "aijobs", "postgres": "aijobs-postgres", "worker": "aijobs-worker"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"

__all__ = ["Built", "build_images", "ensure_docker", "ensure_local_base"]


@dataclass(frozen=True)
class Built:
    target: str
    image: str
    seconds: float
    size_bytes: int


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise AssetError(f"`{' '.join(argv[:4])} …` failed: {(proc.stderr or proc.stdout)[-3000:]}")
    return proc


def ensure_docker(*, log=print, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    """A Docker engine that answers: the running one, or ``dockerd`` started here (root)."""
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        raise AssetError("docker is missing: run scripts/ensure-docker (Debian's docker.io)")
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return
    logs = cache_root() / "dockerd.log"
    logs.parent.mkdir(parents=True, exist_ok=True)
    log(f"starting dockerd (log: {logs})")
    with logs.open("ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise AssetError(f"dockerd did not answer in {timeout:.0f}s; see {logs}")


def ensure_local_base(*, log=print) -> str:  # type: ignore[no-untyped-def]
    """The local Python base image, made once from Debian's packages (about a minute)."""
    if subprocess.run(["docker", "image", "inspect", LOCAL_BASE], capture_output=True).returncode == 0:
        return LOCAL_BASE
    if shutil.which("debootstrap") is None:
        raise AssetError("debootstrap is missing: run scripts/ensure-docker")
    started = time.monotonic()
    rootfs = cache_root() / "rootfs-bookworm"
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"making {LOCAL_BASE} with debootstrap (once)")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            DEBIAN_MIRROR,
        ]
    )
    for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        leftover.unlink()
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    _run(["docker", "import", "-", LOCAL_BASE], stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"made {LOCAL_BASE} in {time.monotonic() - started:.0f}s")
    return LOCAL_BASE


def build_images(  # type: ignore[no-untyped-def]
    tag: str = "0.1.0", targets: tuple[str, ...] = tuple(TARGETS), public_bases: bool = False, log=print
) -> list[Built]:
    ensure_docker(log=log)
    args = [] if public_bases else ["--build-arg", f"PYTHON_IMAGE={ensure_local_base(log=log)}"]
    built = []
    for target in targets:
        image = f"{TARGETS[target]}:{tag}"
        started = time.monotonic()
        log(f"building {image} (--target {target})")
        # The legacy builder: BuildKit needs the buildx plugin, which Debian's docker.io lacks.
        _run(
            ["docker", "build", "-q", "--network", "host", *args, "--target", target, "-t", image, str(ROOT)],
            env={
                "DOCKER_BUILDKIT": "0",
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            },
        )
        size = int(_run(["docker", "image", "inspect", "-f", "{{.Size}}", image]).stdout.strip())
        built.append(Built(target, image, time.monotonic() - started, size))
        log(f"built {image}: {size / 2**20:.0f} MiB in {time.monotonic() - started:.0f}s")
    return built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="0.1.0")
    parser.add_argument("--public-bases", action="store_true", help="use the Dockerfile's public bases")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="default: all")
    args = parser.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        built = build_images(args.tag, tuple(args.target or TARGETS), args.public_bases, log)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps([b.__dict__ for b in built]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
