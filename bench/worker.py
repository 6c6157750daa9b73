"""bench/worker: images/s and latency by pipeline, resolution and batch size, on the device the
worker would use (CUDA if present, else CPU), with torch's own timing (CUDA events after warm-up
and synchronize on GPU). Next to each figure: the learned model's arithmetic intensity, the
device's measured roofline for it (min(peak FLOP/s, intensity x bandwidth), peaks measured here
with a large matmul and a large copy), and the fraction achieved. Then the end-to-end cost of a
worker's image (decode + infer + encode on the worker's codec pool of `codec.THREADS` threads)
against inference alone.

    .venv/bin/python bench/worker.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aijobs_worker import codec
from aijobs_worker.espcn import ESPCN
from aijobs_worker.pipelines import REGISTRY, Models


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Seconds per call, after warm-up."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / repeat
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def peaks(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Measured peak FLOP/s (a large matmul) and memory bandwidth in bytes/s (a large copy)."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flops = 2 * n**3 / timed(lambda: a @ b, device, 10)
    big = torch.empty(64 * 2**20 if device.type == "cuda" else 16 * 2**20, device=device, dtype=torch.float32)
    out = torch.empty_like(big)
    bandwidth = 2 * big.numel() * 4 / timed(lambda: out.copy_(big), device, 10)
    return flops, bandwidth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes (CI smoke run)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    peak_flops, bandwidth = peaks(device, dtype)
    print(
        f"device: {name}; measured peak {peak_flops / 1e12:.2f} TFLOP/s ({dtype}), "
        f"copy bandwidth {bandwidth / 1e9:.0f} GB/s"
    )
    espcn = ESPCN()
    flops_px = espcn.flops_per_pixel()
    item = torch.tensor([], dtype=dtype).element_size()
    # Eager PyTorch writes and reads every activation: input, 32 + 16 + 12 channels, output (4x).
    bytes_px = item * (3 + 2 * (32 + 16 + 12) + 3 * 4 + 3 * 4)
    intensity = flops_px / bytes_px
    roof = min(peak_flops, intensity * bandwidth)
    print(
        f"upscale-x2 (ESPCN): {flops_px} FLOP and ~{bytes_px} bytes per input pixel -> intensity "
        f"{intensity:.1f} FLOP/byte; roofline {roof / 1e12:.3f} TFLOP/s "
        f"({'memory' if roof < peak_flops else 'compute'}-bound)"
    )
    models = Models(device, dtype, None)
    sizes = [256, 512] if args.quick else [256, 512, 1024]
    batches = [1, 8] if device.type == "cpu" else [1, 8, 32, 64]
    pipelines = (
        ["upscale-x2", "sharpen", "grayscale"]
        if args.quick
        else ["upscale-x2", "sharpen", "denoise", "resize", "grayscale"]
    )
    print(f"{'pipeline':<11} {'size':>5} {'batch':>5} {'images/s':>9} {'ms/batch':>9}   roofline use")
    infer_ms: dict[int, float] = {}
    for pipeline in pipelines:
        run = REGISTRY[pipeline].run
        params = {"width": 128, "height": 128, "antialias": True} if pipeline == "resize" else {}
        from aijobs.api.pipelines import validate_parameters

        params = validate_parameters(pipeline, params)
        for size in sizes:
            for batch in batches:
                if device.type == "cpu" and size * size * batch > 512 * 512 * 8:
                    continue
                x = torch.rand(batch, 3, size, size, device=device)
                with torch.inference_mode():
                    seconds = timed(lambda x=x, run=run, params=params: run(x, params, models), device, 5)
                line = f"{pipeline:<11} {size:>5} {batch:>5} {batch / seconds:>9.1f} {seconds * 1000:>9.2f}"
                if pipeline == "upscale-x2":
                    achieved = flops_px * size * size * batch / seconds
                    line += f"   {achieved / 1e12:.3f} TFLOP/s = {100 * achieved / roof:.0f}% of roofline"
                    if batch == 1:
                        infer_ms[size] = seconds * 1000
                print(line)
    print("end to end per image (upscale-x2, batch 1): decode + infer + encode vs infer alone")
    for size in sizes:
        rng = np.random.default_rng(size)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        png = buf.getvalue()
        decode = timed(lambda png=png: codec.decode(png), torch.device("cpu"), 5)
        out = torch.rand(3, size * 2, size * 2)
        encode = timed(lambda out=out: codec.encode(out), torch.device("cpu"), 3)
        infer = infer_ms[size] / 1000
        if device.type == "cuda":
            # The codec runs on CPU threads while the GPU infers other images.
            per_image = max(infer, (decode + encode) / min(codec.THREADS, os.cpu_count() or 1))
        else:
            per_image = decode + infer + encode  # on CPU they share the same cores
        print(
            f"  {size}x{size}: decode {decode * 1000:.1f} ms, infer {infer * 1000:.1f} ms, "
            f"encode {encode * 1000:.1f} ms; end to end {per_image * 1000:.1f} ms/image = "
            f"{per_image / infer:.2f}x inference alone (upload not included)"
        )


if __name__ == "__main__":
    main()
