"""A fault-injecting HTTP proxy: a real network hop between a client and one service.

    python -m aijobs_dev.testbed.faultproxy --port 9001 --upstream http://127.0.0.1:8101 --seed 7

Rules are set over its control API (``PUT /__faults/rules``, a JSON list) and matched by method
and path regex, with a probability and an optional count. Actions:

- ``drop``: close the connection without forwarding (the service never sees the request);
- ``reset``: the same, with a TCP reset;
- ``delay``: wait ``seconds``, then forward;
- ``status``: answer ``status`` (e.g. 503, 429) without forwarding, with ``retryAfter`` if given;
- ``drop-response``: forward, let the service act and commit, then close the connection instead
  of answering (the seed's scenario 2: the caller can't tell success from failure);
- ``slow-body``: forward, then trickle the answer out over ``seconds``;
- ``corrupt-body``: forward, then answer the service's status and headers with the body's first
  8 bytes kept and the rest zeroed (bytes rotten at rest or in transit: an image's signature
  still says PNG, its data no longer decodes).

Every fault is logged (time, rule, method, path, Idempotency-Key); ``GET /__faults/log`` returns
the log. A seed makes the probability draws reproducible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass
class Rule:
    action: str
    path: str = ".*"
    method: str = ".*"
    probability: float = 1.0
    times: int | None = None  # how many times it may fire; None: forever
    seconds: float = 0.0
    status: int = 503
    retry_after: float | None = None
    name: str = ""
    fired: int = 0

    def matches(self, method: str, path: str, rng: random.Random) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if not (re.fullmatch(self.method, method) and re.search(self.path, path)):
            return False
        return rng.random() < self.probability


@dataclass
class FaultLog:
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rule: Rule, request: web.Request) -> None:
        self.entries.append(
            {
                "t": time.time(),
                "rule": rule.name or rule.action,
                "action": rule.action,
                "method": request.method,
                "path": request.path,
                "key": request.headers.get("Idempotency-Key"),
            }
        )


class FaultProxy:
    def __init__(self, upstream: str, seed: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.log = FaultLog()
        self.rng = random.Random(seed)
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("PUT", "/__faults/rules", self.set_rules)
        app.router.add_route("GET", "/__faults/rules", self.get_rules)
        app.router.add_route("GET", "/__faults/log", self.get_log)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _: web.Application) -> None:
        self.session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120))

    async def _close(self, _: web.Application) -> None:
        if self.session:
            await self.session.close()

    async def set_rules(self, request: web.Request) -> web.Response:
        self.rules = [Rule(**r) for r in await request.json()]
        return web.json_response([asdict(r) for r in self.rules])

    async def get_rules(self, _: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.rules])

    async def get_log(self, _: web.Request) -> web.Response:
        return web.json_response(self.log.entries)

    def _pick(self, request: web.Request) -> Rule | None:
        for rule in self.rules:
            if rule.matches(request.method, request.path, self.rng):
                rule.fired += 1
                self.log.add(rule, request)
                return rule
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._pick(request)
        if rule is not None and rule.action in ("drop", "reset"):
            self._cut(request, reset=rule.action == "reset")
            raise asyncio.CancelledError  # aiohttp closes the connection without a response
        if rule is not None and rule.action == "status":
            headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else {}
            problem = {
                "type": "https://aijobs.io/problems/injected-fault",
                "title": "Injected fault",
                "status": rule.status,
                "detail": "the fault proxy answered instead of the service",
            }
            return web.json_response(
                problem, status=rule.status, headers=headers, content_type="application/problem+json"
            )
        if rule is not None and rule.action == "delay":
            await asyncio.sleep(rule.seconds)
        assert self.session is not None
        data = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self.session.request(
            request.method, self.upstream + request.path_qs, data=data, headers=headers, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        if rule is not None and rule.action == "drop-response":
            self._cut(request, reset=False)  # the service acted; the caller never hears of it
            raise asyncio.CancelledError
        if rule is not None and rule.action == "slow-body":
            response = web.StreamResponse(status=status, headers=out_headers)
            response.content_length = len(payload)
            await response.prepare(request)
            chunks = max(1, min(len(payload), 20))
            step = max(1, len(payload) // chunks)
            for start in range(0, len(payload), step):
                await response.write(payload[start : start + step])
                await asyncio.sleep(rule.seconds / chunks)
            await response.write_eof()
            return response
        if rule is not None and rule.action == "corrupt-body":
            payload = payload[:8] + bytes(max(0, len(payload) - 8))
        return web.Response(body=payload, status=status, headers=out_headers)

    @staticmethod
    def _cut(request: web.Request, *, reset: bool) -> None:
        transport = request.transport
        if transport is None:
            return
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", default="[]", help="initial rules, as JSON")
    args = parser.parse_args()
    proxy = FaultProxy(args.upstream, args.seed)
    proxy.rules = [Rule(**r) for r in json.loads(args.rules)]
    web.run_app(proxy.app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
