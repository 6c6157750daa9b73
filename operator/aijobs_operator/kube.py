"""The operator's writes to Kubernetes: a status patch, a finalizer added or removed, an Event.

Few and explicit, each counted (the target is a handful of writes per delivered job). The
synchronous client runs on a thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from aijobs.api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, VERSION
from aijobs_operator.metrics import METRICS

__all__ = ["ApiException", "KubeWriter"]


class KubeWriter:
    def __init__(self, api: k8s.ApiClient, component: str = "aijobs-operator") -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self._core = k8s.CoreV1Api(api)
        self._component = component

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        METRICS.api_writes.labels("status").inc()
        body = await asyncio.to_thread(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
        )
        return cast(dict[str, Any], body)

    async def add_finalizer(self, body: dict[str, Any], finalizer: str) -> dict[str, Any]:
        meta = body["metadata"]
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        ]
        if meta.get("finalizers"):
            ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer})
        else:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]})
        return await self._json_patch(meta["namespace"], meta["name"], ops, "finalizer")

    async def remove_finalizer(self, body: dict[str, Any], finalizer: str) -> None:
        meta = body["metadata"]
        finalizers = meta.get("finalizers") or []
        if finalizer not in finalizers:
            return
        i = finalizers.index(finalizer)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{i}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{i}"},
        ]
        try:
            await self._json_patch(meta["namespace"], meta["name"], ops, "finalizer")
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def _json_patch(
        self, namespace: str, name: str, ops: list[dict[str, Any]], kind: str
    ) -> dict[str, Any]:
        METRICS.api_writes.labels(kind).inc()
        body = await asyncio.to_thread(
            self._custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            ops,
            _content_type="application/json-patch+json",
        )
        return cast(dict[str, Any], body)

    async def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the job (what `kubectl describe` shows). Best effort."""
        meta = body["metadata"]
        now = dt.datetime.now(dt.UTC)
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                name=f"{meta['name']}.{uuid.uuid4().hex[:12]}", namespace=meta["namespace"]
            ),
            involved_object=k8s.V1ObjectReference(
                api_version=API_VERSION,
                kind=KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=k8s.V1EventSource(component=self._component),
            reporting_component=self._component,
        )
        METRICS.api_writes.labels("event").inc()
        try:
            await asyncio.to_thread(self._core.create_namespaced_event, meta["namespace"], event)
        except ApiException:
            METRICS.event_failures.inc()
