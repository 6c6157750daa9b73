"""Train the x2 super-resolution model on procedural images and write its safetensors file.

    .venv/bin/python -m aijobs_worker.train_espcn [--steps 2000] [--out PATH]

Seeded: on any CPU a retrained model reaches the shipped file's quality within a small tolerance
(bit-exact weights differ between instruction sets and thread counts).
Low-resolution inputs are the high-resolution patches downscaled with antialiasing, as a
camera or a thumbnailer would; the model learns the residual over bicubic upscaling.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from aijobs_worker.espcn import ESPCN, SCALE, WEIGHTS
from aijobs_worker.synthetic import batch

TRAIN_SEED = 1234
HELD_OUT_SEED = 987654


def degrade(hr: torch.Tensor) -> torch.Tensor:
    h, w = hr.shape[-2:]
    return F.interpolate(
        hr, size=(h // SCALE, w // SCALE), mode="bilinear", antialias=True, align_corners=False
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).item()
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def evaluate(model: ESPCN, n: int = 64, size: int = 96, seed: int = HELD_OUT_SEED) -> tuple[float, float]:
    """PSNR of the model and of bicubic upscaling on a held-out set the training never saw."""
    hr = batch(np.random.default_rng(seed), n, size)
    lr = degrade(hr)
    with torch.inference_mode():
        ours = model(lr)
        bicubic = F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)
    return psnr(ours, hr), psnr(bicubic, hr)


def train(steps: int, seed: int = TRAIN_SEED) -> ESPCN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ESPCN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    pool = batch(rng, 512, 64)  # a fixed pool of patches, re-sampled with flips each step
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(pool), 32))
        hr = pool[idx]
        if step % 2:
            hr = hr.flip(-1)
        loss = F.l1_loss(model(degrade(hr)), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # reproducible summation order
    started = time.perf_counter()
    model = train(args.steps)
    ours, bicubic = evaluate(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    gain = ours - bicubic
    print(f"trained {args.steps} steps in {time.perf_counter() - started:.0f}s")
    print(f"held-out PSNR {ours:.2f} dB vs bicubic {bicubic:.2f} dB (+{gain:.2f} dB)")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
