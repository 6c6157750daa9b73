"""``aijobs worker``: one inference worker process (one per GPU in a cluster)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

from aijobs.health import start_probe_server
from aijobs.wire.client import ServiceClient
from aijobs.wire.tokens import TokenSigner
from aijobs_worker.config import WorkerSettings
from aijobs_worker.health import Pulse
from aijobs_worker.loop import Worker
from aijobs_worker.runner import Runner, pick_device
from aijobs_worker.spool import Spool
from aijobs_worker.telemetry import REGISTRY, enable_gpu_telemetry

log = logging.getLogger("aijobs.worker")


async def serve(cfg: WorkerSettings) -> None:
    device = pick_device(cfg.device)
    enable_gpu_telemetry()
    pulse = Pulse(cfg.stall_grace_seconds)
    if cfg.metrics_port:  # /metrics, and the kubelet's probes: /healthz (liveness), /readyz
        start_probe_server(cfg.metrics_port, REGISTRY, {"/healthz": pulse.live, "/readyz": pulse.ready})
    signer = TokenSigner(cfg.identity, cfg.secret)
    ai = ServiceClient("ai", cfg.ai_url, signer, timeout=cfg.call_timeout_seconds)
    storage = ServiceClient("storage", cfg.storage_url, signer, timeout=cfg.call_timeout_seconds)
    runner = Runner(device, Path(cfg.model_dir) if cfg.model_dir else None, cfg.max_batch)
    worker_id = cfg.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    worker = Worker(cfg, ai, storage, runner, Spool(Path(cfg.spool_dir)), worker_id, pulse)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    log.info("worker %s on %s: leasing from %s", worker_id, device, cfg.ai_url)
    try:
        await worker.run()
    finally:
        await ai.aclose()
        await storage.aclose()
    log.info("worker %s stopped", worker_id)


def run(cfg: WorkerSettings | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too much
    asyncio.run(serve(cfg or WorkerSettings()))
