"""Kubernetes API clients built from a kubeconfig (injected into whatever needs one)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from kubernetes import client, config

__all__ = ["api_client"]


def api_client(kubeconfig: Path | str | None = None) -> client.ApiClient:
    """A client for ``kubeconfig`` (or the usual in-cluster / ``$KUBECONFIG`` lookup)."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            return cast(client.ApiClient, config.new_client_from_config())  # type: ignore[no-untyped-call]
    return cast(
        client.ApiClient,
        config.new_client_from_config(config_file=str(kubeconfig)),  # type: ignore[no-untyped-call]
    )
