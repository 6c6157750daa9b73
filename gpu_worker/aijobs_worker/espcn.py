"""The learned x2 upscaler: an ESPCN-style network (Shi et al. 2016: features computed at the low
resolution, a sub-pixel convolution at the end) that predicts only the *luminance* detail a
bicubic upscale misses.

The output is bicubic (Keys, a = -0.5: MATLAB's and Pillow's kernel) plus the network's luma
residual added equally to R, G and B. Adding the same amount to the three channels changes Y
(BT.601) by that amount and leaves Cb and Cr exactly as bicubic made them, so the model cannot
put colour fringes where bicubic puts none. About 30 thousand parameters (~120 KiB of
safetensors), trained by ``aijobs_dev.upscaler.train`` on photographs from Debian packages."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

WEIGHTS = Path(__file__).parent / "models" / "espcn_x2.safetensors"
SCALE = 2
LUMA = (0.299, 0.587, 0.114)  # BT.601, as super-resolution papers measure Y

# Keys' cubic (a = -0.5) at the two phases of a x2 upscale (source offsets -0.25 and +0.25),
# as 5-tap filters centred on the source pixel.
_EVEN = (-0.0234375, 0.2265625, 0.8671875, -0.0703125, 0.0)
_ODD = (0.0, -0.0703125, 0.8671875, 0.2265625, -0.0234375)


def bicubic_x2(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C x 2H x 2W, bicubic (a = -0.5) with edges replicated."""
    n, c, h, w = x.shape
    taps = torch.tensor([_EVEN, _ODD], dtype=x.dtype, device=x.device)
    flat = x.reshape(n * c, 1, h, w)
    wide = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), taps.view(2, 1, 1, 5))
    wide = wide.permute(0, 2, 3, 1).reshape(n * c, 1, h, 2 * w)  # interleave even, odd columns
    tall = F.conv2d(F.pad(wide, (0, 0, 2, 2), mode="replicate"), taps.view(2, 1, 5, 1))
    tall = tall.permute(0, 2, 1, 3).reshape(n * c, 1, 2 * h, 2 * w)  # interleave rows
    return tall.reshape(n, c, 2 * h, 2 * w)


def luma(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


class LumaNet(nn.Module):
    """Y at low resolution -> the x2 luma residual over bicubic."""

    def __init__(self, channels: int = 32, depth: int = 3, scale: int = SCALE) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 5, padding=2), nn.PReLU(channels)]
        for _ in range(depth):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.PReLU(channels)]
        layers += [nn.Conv2d(channels, scale * scale, 3, padding=1), nn.PixelShuffle(scale)]
        self.body = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.body(y - 0.5)


class ESPCN(nn.Module):
    def __init__(self, scale: int = SCALE) -> None:
        super().__init__()
        assert scale == 2, "the bicubic base is written for x2"
        self.scale = scale
        self.luma = LumaNet(scale=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x 3 x H x W in [0, 1] -> N x 3 x 2H x 2W in [0, 1]."""
        return (bicubic_x2(x) + self.luma(luma(x))).clamp(0, 1)

    def flops_per_pixel(self) -> int:
        """Multiply-adds x 2 per *input* pixel (the network; bicubic and shuffle are small)."""
        convs = [m for m in self.luma.body if isinstance(m, nn.Conv2d)]
        return sum(2 * c.in_channels * c.out_channels * c.kernel_size[0] * c.kernel_size[1] for c in convs)


def load(path: Path = WEIGHTS, device: torch.device | str = "cpu") -> ESPCN:
    model = ESPCN()
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval()
