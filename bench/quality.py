"""The x2 upscaler against bicubic on natural photographs it never saw (scikit-image's samples),
per protocol and per image: PSNR on Y and RGB, SSIM on Y, chroma error, and the mean gains.

    .venv/bin/python bench/quality.py [--weights PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "devtools"), str(ROOT / "gpu_worker")]

from aijobs_dev.upscaler.degrade import PROTOCOLS  # noqa: E402
from aijobs_dev.upscaler.quality import evaluate, mean_gain  # noqa: E402
from aijobs_worker import espcn  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=espcn.WEIGHTS)
    args = parser.parse_args()
    model = espcn.load(args.weights)
    rows = evaluate(model)
    print(f"weights: {args.weights} ({args.weights.stat().st_size} bytes)")
    print(f"{'protocol':<16} {'image':<18} {'bicubic Y':>9} {'ours Y':>7} {'gain Y':>7} {'gain RGB':>8} "
          f"{'SSIM bic':>8} {'SSIM ours':>9} {'chroma bic':>10} {'chroma ours':>11}")  # fmt: skip
    for r in rows:
        print(
            f"{r.protocol:<16} {r.image:<18} {r.bicubic['psnr_y']:9.2f} {r.ours['psnr_y']:7.2f} "
            f"{r.gain('psnr_y'):+7.2f} {r.gain('psnr_rgb'):+8.2f} {r.bicubic['ssim_y']:8.4f} "
            f"{r.ours['ssim_y']:9.4f} {r.bicubic['chroma_mse']:10.3f} {r.ours['chroma_mse']:11.3f}"
        )
    others = tuple(p for p in PROTOCOLS if p != "bicubic")
    for label, protocols in (("standard (bicubic)", ("bicubic",)), ("other degradations", others)):
        print(
            f"mean gain, {label}: Y {mean_gain(rows, 'psnr_y', protocols):+.2f} dB, "
            f"RGB {mean_gain(rows, 'psnr_rgb', protocols):+.2f} dB, "
            f"SSIM Y {mean_gain(rows, 'ssim_y', protocols):+.4f}"
        )
    worst = min(rows, key=lambda r: r.gain("psnr_rgb"))
    print(
        f"worst single image: {worst.image} under {worst.protocol}: "
        f"RGB {worst.gain('psnr_rgb'):+.2f} dB, Y {worst.gain('psnr_y'):+.2f} dB"
    )
    chroma_over = [r for r in rows if r.ours["chroma_mse"] > r.bicubic["chroma_mse"] + 1e-9]
    print(f"chroma error above bicubic's: {len(chroma_over)} of {len(rows)} (image, protocol) pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
