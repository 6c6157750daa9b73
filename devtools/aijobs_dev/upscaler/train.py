"""Train the x2 upscaler's luma network on natural photographs and write its safetensors file.

    .venv/bin/python -m aijobs_dev.upscaler.train [--steps 8000] [--out PATH]

The photographs come from Debian packages (:mod:`.photos`); each is reduced so that camera noise
and JPEG blocks are averaged away, then cut into patches. A patch's low-resolution twin is made
by one of the protocols of :mod:`.degrade`, drawn at random (half of them the field's standard
bicubic), so the model learns to undo several cameras' and thumbnailers' blurs, not one. Seeded:
a retrained model reaches the same quality within a small tolerance on any CPU (bit-exact
weights differ between instruction sets and thread counts)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from aijobs_worker.espcn import ESPCN, WEIGHTS, bicubic_x2, load
from PIL import Image
from safetensors.torch import save_file

from aijobs_dev.upscaler import degrade
from aijobs_dev.upscaler.photos import training_photos

SEED = 20261127
PATCH = 64  # high-resolution side; the network sees 32 x 32
MIX = (
    ("bicubic", 0.5),
    ("bilinear", 0.1),
    ("area", 0.1),
    ("blur0.8+bicubic", 0.15),
    ("bicubic+jpeg75", 0.15),
)
# The second stage: the base model, trained on, with compressed pictures four times as likely.
# Without it the base sharpens JPEG's block edges along with the photograph's own edges (the
# worst evaluation pair lost 0.24 dB to bicubic); a short run at a low rate teaches it to leave
# them, at a small cost on clean pictures.
FINETUNE_MIX = (
    ("bicubic", 0.3),
    ("bilinear", 0.05),
    ("area", 0.05),
    ("blur0.8+bicubic", 0.1),
    ("bicubic+jpeg75", 0.5),
)


def _reduced(path: Path, short_side: int = 720) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    factor = min(image.size) / short_side
    if factor > 1.2:
        image = image.resize(
            (round(image.width / factor), round(image.height / factor)), Image.Resampling.LANCZOS
        )
    return np.asarray(image)


def _y(p: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(degrade.ycbcr(p)[..., 0] / 255.0).float()


def patch_pool(
    rng: np.random.Generator, count: int, mix: tuple[tuple[str, float], ...] = MIX
) -> tuple[torch.Tensor, torch.Tensor]:
    """(low-resolution Y, high-resolution Y) patches: N x 1 x 32 x 32 and N x 1 x 64 x 64."""
    photos = [_reduced(p) for p in training_photos()]
    weights = np.array([p.shape[0] * p.shape[1] for p in photos], dtype=float)
    names = [name for name, _ in mix]
    odds = np.array([odds for _, odds in mix])
    lows, highs = [], []
    for _ in range(count):
        photo = photos[rng.choice(len(photos), p=weights / weights.sum())]
        top = rng.integers(0, photo.shape[0] - PATCH + 1)
        left = rng.integers(0, photo.shape[1] - PATCH + 1)
        hr = photo[top : top + PATCH, left : left + PATCH]
        lr = degrade.PROTOCOLS[names[rng.choice(len(names), p=odds)]](hr)
        lows.append(_y(lr))
        highs.append(_y(hr))
    return torch.stack(lows)[:, None], torch.stack(highs)[:, None]


def _augment(low: torch.Tensor, high: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if k & 1:
        low, high = low.flip(-1), high.flip(-1)
    if k & 2:
        low, high = low.flip(-2), high.flip(-2)
    if k & 4:
        low, high = low.transpose(-1, -2), high.transpose(-1, -2)
    return low, high


def train(
    steps: int,
    pool_size: int = 6000,
    seed: int = SEED,
    log: bool = True,
    start: ESPCN | None = None,
    mix: tuple[tuple[str, float], ...] = MIX,
    max_lr: float = 2e-3,
) -> tuple[ESPCN, dict[str, float]]:
    """Train from scratch, or on from ``start`` (the fine-tuning stage: another mix, a lower rate)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lows, highs = patch_pool(rng, pool_size, mix)
    held = slice(0, 256)  # patches kept out of training: the log's held-out figure
    model = start if start is not None else ESPCN()
    net = model.luma.to(memory_format=torch.channels_last)  # faster convolutions on CPU
    net.train()
    lows = lows.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=max_lr / 2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.05)
    started = time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(256, pool_size, 32))
        low, high = _augment(lows[idx], highs[idx], step % 8)
        loss = F.l1_loss(bicubic_x2(low) + net(low), high)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        if log and (step + 1) % 500 == 0:
            print(
                f"step {step + 1}/{steps}: loss {loss.item():.5f} ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    model.eval()
    with torch.inference_mode():
        low, high = lows[held], highs[held]
        ours = F.mse_loss((bicubic_x2(low) + net(low)).clamp(0, 1), high).item()
        base = F.mse_loss(bicubic_x2(low).clamp(0, 1), high).item()
    figures = {"held_out_psnr_y": -10 * np.log10(ours), "bicubic_psnr_y": -10 * np.log10(base)}
    return model, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--pool", type=int, default=8000, help="training patches")
    parser.add_argument("--finetune-steps", type=int, default=1500, help="second stage; 0: none")
    parser.add_argument("--finetune-pool", type=int, default=4000)
    parser.add_argument(
        "--from", dest="start", type=Path, help="skip the first stage: fine-tune these weights"
    )
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.start is None:
        model, figures = train(args.steps, args.pool)
    else:
        model, figures = load(args.start), {}
    if args.finetune_steps:
        model, figures = train(
            args.finetune_steps,
            args.finetune_pool,
            seed=SEED + 1,
            start=model,
            mix=FINETUNE_MIX,
            max_lr=2e-4,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "steps": str(args.steps),
        "pool": str(args.pool),
        "finetune_steps": str(args.finetune_steps),
        "finetune_pool": str(args.finetune_pool),
        "seed": str(SEED),
        **{k: f"{v:.3f}" for k, v in figures.items()},
    }
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out), metadata=metadata)
    print(f"trained {args.steps} steps in {time.perf_counter() - started:.0f}s")
    print(json.dumps(figures))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
