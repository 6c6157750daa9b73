"""Fetching an image from an http(s) URL named in a manifest, without becoming a proxy into the
cluster (SSRF): every address the host resolves to must be public, unless an allow-list admits
its range; redirects are not followed; the size and the time are limited."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from aijobs_services.kit.problems import Problem, Unprocessable


class UrlRefused(Unprocessable):
    slug, title = "url-refused", "URL not allowed"


class FetchFailed(Problem):
    status, slug, title = 502, "fetch-failed", "Could not fetch the URL"


async def check_url(url: str, allow: list[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused(f"only http(s) URLs with a host can be ingested, not {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlRefused(f"host {parts.hostname!r} does not resolve") from exc
    allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in allow]
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_global or any(address in net for net in allowed):
            continue
        raise UrlRefused(
            f"{parts.hostname} resolves to {address}, a private, loopback or link-local address; "
            "ingest refuses those unless an allow-list admits them",
            address=str(address),
        )


async def fetch(url: str, allow: list[str], timeout: float) -> AsyncIterator[bytes]:
    await check_url(url, allow)
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
            asyncio.timeout(timeout),
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise FetchFailed(
                    f"GET {url} answered {response.status_code}", upstreamStatus=response.status_code
                )
            async for chunk in response.aiter_bytes(65536):
                yield chunk
    except (httpx.HTTPError, TimeoutError) as exc:
        raise FetchFailed(f"GET {url} failed: {type(exc).__name__}") from exc
