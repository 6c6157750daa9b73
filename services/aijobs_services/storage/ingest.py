"""Fetching an image from an http(s) URL named in a manifest, without becoming a proxy into the
cluster (SSRF): the shared outbound policy (:mod:`aijobs_services.kit.outbound`) checks the URL
and every address its host resolves to, and the fetch connects to the address that was checked;
redirects are not followed; the size and the time are limited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from aijobs_services.kit import outbound
from aijobs_services.kit.problems import Problem


class FetchFailed(Problem):
    status, slug, title = 502, "fetch-failed", "Could not fetch the URL"


async def check_url(url: str, allow: list[str]) -> outbound.Destination:
    return await asyncio.to_thread(outbound.check, url, outbound.networks(allow))


async def fetch(destination: outbound.Destination, timeout: float) -> AsyncIterator[bytes]:
    url, headers, extensions = destination.request()
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
            asyncio.timeout(timeout),
            client.stream("GET", url, headers=headers, extensions=extensions) as response,
        ):
            if response.status_code != 200:
                raise FetchFailed(
                    f"GET {destination.url} answered {response.status_code}",
                    upstreamStatus=response.status_code,
                )
            async for chunk in response.aiter_bytes(65536):
                yield chunk
    except (httpx.HTTPError, TimeoutError) as exc:
        raise FetchFailed(f"GET {destination.url} failed: {type(exc).__name__}") from exc
