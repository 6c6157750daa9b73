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
    """The URL's server could not answer now (a 5xx, 408 or 429, or no answer): worth a retry."""

    status, slug, title = 502, "fetch-failed", "Could not fetch the URL"


class FetchRefused(Problem):
    """The URL's server answered a definite no (a 4xx: gone, forbidden...) or a redirect, which
    ingest never follows: asking again will not change it."""

    status, slug, title = 422, "fetch-refused", "The URL gave no image"


# What the URL's server may answer that a later try may not: the rest of 3xx and 4xx is final.
TRANSIENT = frozenset({408, 425, 429})


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
                final = 300 <= response.status_code < 500 and response.status_code not in TRANSIENT
                raise (FetchRefused if final else FetchFailed)(
                    f"GET {destination.url} answered {response.status_code}",
                    upstreamStatus=response.status_code,
                )
            async for chunk in response.aiter_bytes(65536):
                yield chunk
    except (httpx.HTTPError, TimeoutError) as exc:
        raise FetchFailed(f"GET {destination.url} failed: {type(exc).__name__}") from exc
