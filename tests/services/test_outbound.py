"""The outbound policy every call to a user-given address goes through (webhooks, ingest)."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from aijobs_services.kit.outbound import DestinationRefused, check, networks


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param("http://127.0.0.1:8080/hook", "127.0.0.1", id="loopback"),
        pytest.param("http://localhost/hook", "resolves to", id="localhost"),
        pytest.param("http://169.254.169.254/latest/meta-data/", "169.254.169.254", id="cloud-metadata"),
        pytest.param("http://10.0.0.7/hook", "10.0.0.7", id="private-10"),
        pytest.param("http://192.168.1.1/hook", "192.168.1.1", id="private-192"),
        pytest.param("http://[::1]/hook", "::1", id="ipv6-loopback"),
        pytest.param("http://[::ffff:127.0.0.1]/hook", "resolves to", id="ipv4-mapped-loopback"),
        pytest.param("http://0.0.0.0/hook", "resolves to", id="unspecified"),
        pytest.param("http://224.0.0.1/hook", "224.0.0.1", id="multicast"),
        pytest.param("ftp://example.com/x", "http(s)", id="not-http"),
        pytest.param("http://user:pw@example.com/x", "user-info", id="user-info"),
        pytest.param("https:///nohost", "http(s)", id="no-host"),
    ],
)
def test_a_non_public_or_odd_destination_is_refused(url: str, says: str) -> None:
    with pytest.raises(DestinationRefused) as refused:
        check(url, ())
    assert says in str(refused.value.detail)


def test_an_operator_allow_list_admits_a_private_range() -> None:
    assert check("http://127.0.0.1:9/x", networks(["127.0.0.0/8"])).address == "127.0.0.1"


def test_the_request_goes_to_the_checked_address_not_to_the_name_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the name resolves to a public address when checked and to a private one
    afterwards; the connection must still go to the address that was checked."""
    answers = iter(["93.184.216.34", "127.0.0.1"])

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    destination = check("https://images.example.com/cat.png?x=1", ())
    url, headers, extensions = destination.request()
    assert url == "https://93.184.216.34/cat.png?x=1"
    assert headers == {"Host": "images.example.com"} and extensions == {"sni_hostname": "images.example.com"}
    seen: list[httpx.Request] = []
    client = httpx.Client(transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200)))
    client.get(url, headers=headers, extensions=extensions)
    assert seen[0].url.host == "93.184.216.34" and seen[0].headers["host"] == "images.example.com"
