"""Install the project's CustomResourceDefinitions and wait until the API server serves them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

__all__ = ["CRD_DIR", "install_crds", "load_crds"]

CRD_DIR = Path(__file__).resolve().parent.parent / "crds"


def load_crds(folder: Path = CRD_DIR) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def install_crds(api: client.ApiClient, folder: Path = CRD_DIR, timeout: float = 60.0) -> list[str]:
    """Create or replace each CRD, then wait for ``Established``; returns their names."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for crd in load_crds(folder):
        name = crd["metadata"]["name"]
        try:
            current = ext.read_custom_resource_definition(name)
            assert current.metadata is not None
            crd["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, cast(Any, crd))
        except ApiException as exc:
            if exc.status != 404:
                raise
            ext.create_custom_resource_definition(cast(Any, crd))
        names.append(name)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            status = ext.read_custom_resource_definition(name).status
            conditions = (status.conditions if status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
            time.sleep(0.1)
    _wait_openapi(api, {crd["spec"]["group"] for crd in load_crds(folder)}, deadline)
    return names


def _wait_openapi(api: client.ApiClient, groups: set[str], deadline: float) -> None:
    """``kubectl explain`` reads the published OpenAPI document, which lags ``Established``."""
    for group in groups:
        while True:
            response = api.call_api("GET", f"{api.configuration.host}/openapi/v3")
            doc = json.loads(response.read())  # type: ignore[no-untyped-call]
            if any(path.startswith(f"apis/{group}/") for path in doc.get("paths", {})):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"OpenAPI for {group} not published in time")
            time.sleep(0.2)
