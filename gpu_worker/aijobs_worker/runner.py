"""Batched inference on the worker's device: same-sized inputs of one pipeline and parameters run
together, in ``torch.inference_mode``, half precision on GPU where the model allows, inputs in
pinned host memory copied without blocking. On CPU the same code runs in float32."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aijobs_worker.pipelines import Models, prepare


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class Item:
    """One task's image through the runner."""

    key: str
    pipeline: str
    params: dict[str, Any]
    image: torch.Tensor  # 3 x H x W uint8 (CPU)
    output: torch.Tensor | None = None  # 3 x H' x W' float (CPU)
    error: str | None = None


class Runner:
    def __init__(self, device: torch.device, model_dir: Path | None = None, max_batch: int = 32) -> None:
        self.device = device
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.models = Models(device, dtype, model_dir)
        self.max_batch = max_batch

    def batch_limit(self, item: Item) -> int:
        """How many images of this size fit: from free GPU memory (a fifth of it, leaving
        room for activations ~40x the input), else the configured maximum."""
        if self.device.type != "cuda":
            return self.max_batch
        free, _ = torch.cuda.mem_get_info(self.device)
        per_image = item.image.numel() * 4 * 40
        return max(1, min(self.max_batch, int(free * 0.2 // per_image)))

    def run(self, items: list[Item]) -> list[Item]:
        """Fill each item's ``output`` or ``error``; a bad item never fails the others."""
        groups: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            try:
                pipeline, item.params = prepare(item.pipeline, item.params)
            except (KeyError, ValueError) as exc:
                item.error = f"bad pipeline or parameters: {exc}"
                continue
            size = tuple(item.image.shape)
            signature = json.dumps([item.pipeline, item.params, size], sort_keys=True)
            if not pipeline.batchable:
                signature += item.key
            groups[signature].append(item)
        for group in groups.values():
            limit = self.batch_limit(group[0])
            for start in range(0, len(group), limit):
                self._run_batch(group[start : start + limit])
        return items

    def _run_batch(self, batch: list[Item]) -> None:
        pipeline, _ = prepare(batch[0].pipeline, batch[0].params)
        try:
            with torch.inference_mode():
                host = torch.stack([item.image for item in batch])
                if self.device.type == "cuda":
                    host = host.pin_memory()
                x = host.to(self.device, non_blocking=True).float().div_(255)
                y = pipeline.run(x, batch[0].params, self.models)
                out = y.float().cpu()
        except Exception as exc:  # a model error fails this batch's tasks, not the worker
            if len(batch) > 1:  # find the culprit: run one by one
                for item in batch:
                    self._run_batch([item])
                return
            batch[0].error = f"{type(exc).__name__}: {exc}"
            return
        for item, result in zip(batch, out, strict=True):
            item.output = result
