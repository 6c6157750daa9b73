"""Natural photographs for training, taken from Debian packages (a registry these machines reach;
nothing is downloaded from elsewhere): OpenCV's sample pictures (``opencv-doc``) and KDE
Plasma's photographic wallpapers (``plasma-workspace-wallpapers``). scikit-image's sample
photographs are kept for evaluation only (``bench/quality.py``) and never trained on.

Fetched once with ``apt-get download`` and ``dpkg-deb``, into ``~/.cache/aijobs/photos``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

_OPENCV = "./usr/share/doc/opencv-doc/examples/data/"
_PLASMA = "./usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
PHOTOS: dict[str, list[str]] = {
    "opencv-doc": [
        _OPENCV + name
        for name in (
            "aero1.jpg",
            "aero3.jpg",
            "aloeL.jpg",
            "apple.jpg",
            "baboon.jpg",
            "basketball1.png",
            "board.jpg",
            "building.jpg",
            "butterfly.jpg",
            "fruits.jpg",
            "graf1.png",
            "home.jpg",
            "leuvenA.jpg",
            "leuvenB.jpg",
            "messi5.jpg",
            "orange.jpg",
            "rubberwhale1.png",
            "smarties.png",
            "squirrel_cls.jpg",
        )
    ],
    "plasma-workspace-wallpapers": [
        _PLASMA.format(name)
        for name in (
            "Autumn",
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        )
    ],
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aijobs" / "photos"


def training_photos(folder: Path | None = None) -> list[Path]:
    """The training photographs, fetched from their packages the first time."""
    folder = folder or cache_dir()
    paths: list[Path] = []
    for package, members in PHOTOS.items():
        wanted = {m: folder / package / m.replace("./usr/share/", "").replace("/", "_") for m in members}
        if not all(p.exists() for p in wanted.values()):
            _extract(package, wanted)
        paths += sorted(wanted.values())
    return paths


def _extract(package: str, wanted: dict[str, Path]) -> None:
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"training photos come from Debian's {package} package: apt-get is needed")
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "-q", package]
        if subprocess.run(download, cwd=tmp, capture_output=True).returncode != 0:
            # A fresh machine may not have read its package lists yet.
            sudo = [] if os.geteuid() == 0 else ["sudo"]
            subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, capture_output=True)
            subprocess.run(download, cwd=tmp, check=True, capture_output=True)
        [deb] = Path(tmp).glob("*.deb")
        data = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
        ).stdout
        tar_path = Path(tmp) / "data.tar"
        tar_path.write_bytes(data)
        with tarfile.open(tar_path) as tar:
            for member, target in wanted.items():
                source = tar.extractfile(member)
                if source is None:
                    raise RuntimeError(f"{package} has no {member}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read())
