"""Worker metrics: per-task timings, and GPU telemetry from NVML (nvidia-ml-py) under names close
to NVIDIA's DCGM exporter. Without an NVIDIA GPU the worker says so once and exports none."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("aijobs.worker")

REGISTRY = CollectorRegistry()
_buckets = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STAGE_SECONDS = Histogram(
    "aijobs_worker_stage_seconds",
    "Seconds per task in each stage: a lease's (or batch's) wall seconds in the stage over its tasks",
    ["stage"],
    registry=REGISTRY,
    buckets=_buckets,
)
QUEUE_WAIT = Histogram(
    "aijobs_worker_queue_wait_seconds",
    "From a task's run-at to its lease",
    registry=REGISTRY,
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
for _stage in ("fetch", "decode", "infer", "encode", "upload"):  # from 0, so rate() sees the first
    STAGE_SECONDS.labels(_stage)
IMAGES = Counter("aijobs_worker_images_total", "Images processed", ["pipeline", "outcome"], registry=REGISTRY)
UPLOAD_RETRIES = Counter("aijobs_worker_upload_retries_total", "Result uploads retried", registry=REGISTRY)


class NvmlCollector(Collector):
    def __init__(self) -> None:
        self.nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            log.info("NVML: %d GPU(s)", pynvml.nvmlDeviceGetCount())
        except Exception as exc:  # no driver, no GPU: a CPU worker is a normal thing
            log.info(
                "no NVIDIA GPU found (%s); GPU telemetry is off, inference runs on CPU", type(exc).__name__
            )

    def collect(self) -> Any:
        if self.nvml is None:
            return
        nv = self.nvml
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (%)", labels=["gpu", "UUID"])
        used = GaugeMetricFamily(
            "DCGM_FI_DEV_FB_USED", "Framebuffer memory used (MiB)", labels=["gpu", "UUID"]
        )
        free = GaugeMetricFamily(
            "DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (MiB)", labels=["gpu", "UUID"]
        )
        temp = GaugeMetricFamily("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (C)", labels=["gpu", "UUID"])
        power = GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (W)", labels=["gpu", "UUID"])
        mine = GaugeMetricFamily(
            "aijobs_worker_gpu_process_memory_bytes", "GPU memory used by this worker", labels=["gpu", "UUID"]
        )
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = nv.nvmlDeviceGetUUID(h)
            labels = [str(i), uuid if isinstance(uuid, str) else uuid.decode()]
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util.add_metric(labels, nv.nvmlDeviceGetUtilizationRates(h).gpu)
            used.add_metric(labels, mem.used / 2**20)
            free.add_metric(labels, mem.free / 2**20)
            temp.add_metric(labels, nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            with contextlib.suppress(nv.NVMLError):
                power.add_metric(labels, nv.nvmlDeviceGetPowerUsage(h) / 1000)
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
                mine.add_metric(labels, sum(p.usedGpuMemory or 0 for p in procs if p.pid == os.getpid()))
            except nv.NVMLError:
                pass
        yield from (util, used, free, temp, power, mine)


def enable_gpu_telemetry() -> NvmlCollector:
    collector = NvmlCollector()
    REGISTRY.register(collector)
    return collector
