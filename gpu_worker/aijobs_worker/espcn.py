"""A compact learned super-resolution network (ESPCN, Shi et al. 2016), x2, predicting the
residual over a bicubic upscale. About 8.9 thousand parameters: it ships in the repository as a
safetensors file of ~36 KiB, trained by ``train_espcn.py`` on images it generates itself."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

WEIGHTS = Path(__file__).parent / "models" / "espcn_x2.safetensors"
SCALE = 2


class ESPCN(nn.Module):
    def __init__(self, scale: int = SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),
            nn.Tanh(),
            nn.Conv2d(32, 16, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(16, 3 * scale * scale, 3, padding=1),
        )
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x 3 x H x W in [0, 1] -> N x 3 x sH x sW in [0, 1]."""
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return (base + self.shuffle(self.body(x))).clamp(0, 1)

    def flops_per_pixel(self) -> int:
        """Multiply-adds x 2 per *input* pixel (the network body; bicubic and shuffle are small)."""
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        return sum(2 * c.in_channels * c.out_channels * c.kernel_size[0] * c.kernel_size[1] for c in convs)


def load(path: Path = WEIGHTS, device: torch.device | str = "cpu") -> ESPCN:
    model = ESPCN()
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval()
