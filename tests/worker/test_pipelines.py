"""The worker's pipelines on real images: shapes, types, the learned model's quality, users' own
models, and bad inputs that fail alone."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from aijobs_worker import codec, espcn
from aijobs_worker.pipelines import REGISTRY
from aijobs_worker.runner import Item, Runner
from PIL import Image

from aijobs.api.pipelines import PARAMETERS


def _photo(width: int = 40, height: int = 30) -> torch.Tensor:
    rng = np.random.default_rng(3)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3) + rng.normal(
        0, 20, (height, width, 3)
    )
    return torch.from_numpy(np.clip(base, 0, 255).astype(np.uint8)).permute(2, 0, 1)


@pytest.mark.parametrize(
    ("pipeline", "params", "size"),
    [
        pytest.param("upscale-x2", {}, (60, 80), id="upscale-x2"),
        pytest.param("resize", {"width": 20, "height": 10}, (10, 20), id="resize"),
        pytest.param("thumbnail", {"size": 16}, (12, 16), id="thumbnail"),
        pytest.param("denoise", {"strength": 1.0}, (30, 40), id="denoise"),
        pytest.param("sharpen", {"amount": 1.5}, (30, 40), id="sharpen"),
        pytest.param("grayscale", {}, (30, 40), id="grayscale"),
    ],
)
def test_each_pipeline_gives_an_image_of_the_right_shape(
    pipeline: str, params: dict, size: tuple[int, int]
) -> None:
    [item] = Runner(torch.device("cpu")).run([Item("t", pipeline, params, _photo())])
    assert item.error is None and item.output is not None
    assert item.output.dtype == torch.float32 and tuple(item.output.shape) == (3, *size)
    assert item.output.min() >= 0 and item.output.max() <= 1
    png = codec.encode(item.output)
    assert Image.open(io.BytesIO(png)).size == (size[1], size[0])
    if pipeline == "grayscale":
        assert torch.equal(item.output[0], item.output[1]) and torch.equal(item.output[1], item.output[2])
    if pipeline == "denoise":
        assert item.output.std() < _photo().float().div(255).std()


def test_the_registry_and_the_shared_schemas_name_the_same_pipelines() -> None:
    assert set(REGISTRY) == set(PARAMETERS)


@pytest.fixture(scope="module")
def quality() -> list[Any]:
    from aijobs_dev.upscaler.quality import evaluate

    return evaluate(espcn.load())


def test_the_upscaler_beats_bicubic_on_photographs_it_never_saw(quality: list[Any]) -> None:
    """scikit-image's sample photographs (never trained on), low resolution made as the field's
    papers make it (bicubic, antialiased): +1 dB on Y and on RGB; under other cameras' and
    thumbnailers' blurs (bilinear, area, a Gaussian blur, JPEG 75) +0.5 dB; on no image under
    any of them much worse than bicubic."""
    from aijobs_dev.upscaler.degrade import PROTOCOLS
    from aijobs_dev.upscaler.quality import mean_gain

    others = tuple(p for p in PROTOCOLS if p != "bicubic")
    assert mean_gain(quality, "psnr_y", ("bicubic",)) >= 1.0
    assert mean_gain(quality, "psnr_rgb", ("bicubic",)) >= 1.0
    assert mean_gain(quality, "psnr_rgb", others) >= 0.5
    assert mean_gain(quality, "ssim_y", ("bicubic",)) > 0
    worst = min(quality, key=lambda r: r.gain("psnr_rgb"))
    assert worst.gain("psnr_rgb") >= -0.2, (worst.image, worst.protocol)
    assert espcn.WEIGHTS.stat().st_size < 2 * 1024 * 1024


def test_the_upscaler_adds_no_colour_fringes(quality: list[Any]) -> None:
    """Its chroma (Cb, Cr) error against the photograph is bicubic's, on every image: it changes
    luma only (rounding to 8 bits and clipping at black and white may move chroma a little)."""
    for row in quality:
        assert row.ours["chroma_mse"] <= row.bicubic["chroma_mse"] * 1.02 + 0.01, (row.image, row.protocol)


def test_a_users_torchscript_model_from_a_mounted_folder_runs(tmp_path: Path) -> None:
    class Invert(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 1.0 - x

    torch.jit.script(Invert()).save(str(tmp_path / "invert.pt"))
    runner = Runner(torch.device("cpu"), model_dir=tmp_path)
    image = _photo()
    [ok, missing, escape] = runner.run(
        [
            Item("a", "user-model", {"model": "invert.pt"}, image),
            Item("b", "user-model", {"model": "nope.pt"}, image),
            Item("c", "user-model", {"model": "..pt"}, image),
        ]
    )
    assert ok.output is not None and torch.allclose(ok.output, 1 - image.float() / 255, atol=1e-6)
    assert missing.output is None and "no model 'nope.pt'" in (missing.error or "")
    assert escape.output is None and escape.error


def test_one_bad_task_in_a_batch_fails_alone() -> None:
    runner = Runner(torch.device("cpu"))
    image = _photo()
    items = runner.run(
        [
            Item("good-1", "sharpen", {}, image),
            Item("bad-params", "sharpen", {"amount": -1}, image),
            Item("unknown", "teleport", {}, image),
            Item("good-2", "sharpen", {}, image),
        ]
    )
    assert [i.output is not None for i in items] == [True, False, False, True]
    assert "amount" in (items[1].error or "") and "teleport" in (items[2].error or "")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\0" * 20, id="truncated"),
        pytest.param(b"GIF89a nonsense", id="corrupt"),
    ],
)
def test_a_corrupt_image_is_a_clear_non_retryable_error(data: bytes) -> None:
    with pytest.raises(codec.BadImage):
        codec.decode(data)


def test_decoding_keeps_pixels_and_drops_alpha() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (5, 4), (10, 20, 30, 40)).save(buf, "PNG")
    tensor = codec.decode(buf.getvalue())
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.uint8
    assert tensor[:, 0, 0].tolist() == [10, 20, 30]


# The short recipe's gain on Y under the standard protocol, as measured when the shipped
# weights were trained (same seed, same photographs): a retraining must land near it.
SHORT_RECIPE = ("--steps", "600", "--pool", "2000", "--finetune-steps", "150", "--finetune-pool", "1000")
SHORT_RECIPE_GAIN_Y = 1.19  # measured here (AMD EPYC Zen 4, 2 threads)


@pytest.mark.slow
def test_retraining_reproduces_the_recipes_quality(tmp_path: Path) -> None:
    """Bit-exact weights are not reproducible across CPUs (kernels differ with the instruction
    set and thread count); what a user relies on is the quality, so that is what must reproduce.
    A short run of the shipped recipe (same seed, photographs, degradations) keeps make test
    quick; ``python -m aijobs_dev.upscaler.train`` runs the full one."""
    import subprocess
    import sys

    from aijobs_dev.upscaler.quality import evaluate, mean_gain

    out = tmp_path / "espcn.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "aijobs_dev.upscaler.train", *SHORT_RECIPE, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    gain = mean_gain(evaluate(espcn.load(out), ("bicubic",)), "psnr_y", ("bicubic",))
    assert abs(gain - SHORT_RECIPE_GAIN_Y) <= 0.3, (
        f"retrained: {gain:+.2f} dB, recorded {SHORT_RECIPE_GAIN_Y:+.2f} dB"
    )
