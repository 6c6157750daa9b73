"""Calls to addresses users give us — webhooks, image URLs to ingest — under one policy, so that
no service becomes a proxy into the cluster (SSRF):

- only ``http`` and ``https``, with a host and no user-info;
- every address the host resolves to must be public: loopback, private, link-local (the cloud
  metadata service at 169.254.169.254 among them), multicast, reserved and unspecified addresses
  are refused unless the operator's allow-list (CIDRs) admits them;
- the connection goes to the address that was checked, never to the name again (a DNS answer
  that changes in between — rebinding — can't redirect it): the URL carries the IP, the ``Host``
  header and TLS's server name carry the name, so certificates are still verified against it;
- redirects are not followed; time and size are limited by the caller.

A refusal is a :class:`DestinationRefused` (422, ``destination-refused``), naming the field; a URL
that is not even well formed (``http://[::1/x.png``) is its subclass :class:`BadUrl` (422,
``bad-url``), found by :func:`parse` without a DNS lookup, so that Main API refuses it before a
job exists.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from aijobs.api.rules import HTTP_URL_PORTABLE
from aijobs_services.kit.problems import Unprocessable

__all__ = ["BadUrl", "Destination", "DestinationRefused", "check", "networks", "parse"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DestinationRefused(Unprocessable):
    slug, title = "destination-refused", "Destination not allowed"


class BadUrl(DestinationRefused):
    slug, title = "bad-url", "Not a well-formed http(s) URL"


def networks(allow: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow)


@dataclass(frozen=True)
class Destination:
    """A checked URL, and the address to connect to."""

    url: str
    host: str
    address: str

    def request(self) -> tuple[str, dict[str, str], dict[str, Any]]:
        """(URL with the checked address, headers, httpx extensions) for a pinned request."""
        parts = urlsplit(self.url)
        ip = ipaddress.ip_address(self.address)
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host = self.host if parts.port is None else f"{self.host}:{parts.port}"
        extensions = {"sni_hostname": self.host} if parts.scheme == "https" else {}
        return pinned, {"Host": host}, extensions


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _public(address.ipv4_mapped)
    return address.is_global and not (address.is_multicast or address.is_reserved)


def parse(url: str, field: str = "url") -> tuple[SplitResult, str, int]:
    """``url`` split, with its host and port, if it is a well-formed http(s) URL with a host and no
    user-info; :class:`BadUrl` otherwise. Pure: no DNS."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # an unclosed "[", an address that is not one, a port out of range
        raise BadUrl(f"{field}: {url!r} is not a well-formed URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise BadUrl(f"{field}: only http(s) URLs with a host are allowed, not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise BadUrl(f"{field}: a URL with user-info is not allowed")
    if port == 0 or not re.fullmatch(HTTP_URL_PORTABLE, url):
        raise BadUrl(
            f"{field}: {url!r} is not a well-formed http(s) URL (a host name or [IPv6 address], an "
            "optional port from 1 to 65535, no spaces)"
        )
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def check(url: str, allow: Sequence[Network], field: str = "url") -> Destination:
    """Check ``url`` against the policy; resolve it once. Blocking (DNS): run it on a thread from
    async code."""
    _, host, port = parse(url, field)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DestinationRefused(f"{field}: host {host!r} does not resolve") from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    for address in addresses:
        if not _public(address) and not any(address in net for net in allow):
            raise DestinationRefused(
                f"{field}: {host} resolves to {address}, a loopback, private, link-local or "
                "otherwise non-public address; such destinations are refused unless the operator's "
                "allow-list admits them",
                address=str(address),
            )
    return Destination(url, host, str(addresses[0]))
