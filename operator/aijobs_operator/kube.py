"""The operator's writes to Kubernetes: a status patch, a finalizer added or removed, an Event,
a finished job deleted when its TTL is up; and the one read that must not come from the
operator's cache: which jobs exist now (:meth:`KubeWriter.job_uids`).

Few and explicit, each counted (the target is a handful of writes per delivered job). One writer
serves both kinds the operator owns: namespaced AIImageJobs (the job reconciler, the auditor) and
cluster-scoped CreditAccounts (the account reconciler); a :class:`Resource` says which.

:class:`KubeWriter` is the contract, so that the code that writes is the same in production and in
the deterministic simulator: :class:`ApiKubeWriter` talks to the API server (its synchronous
client runs on a thread so the event loop never blocks), the simulator's ``KubeTwin`` keeps the
objects in memory. Both raise :class:`ApiException` as the API server answers: 404 gone; 409 a
status write's resourceVersion precondition refused, or 422 with no causes a JSON patch's
``test`` of it (both: :func:`stale`); 422 with causes, the object refused by its schema.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from aijobs.api.tenancy import ACCOUNT_KIND, ACCOUNT_PLURAL
from aijobs.api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, VERSION
from aijobs_operator.metrics import METRICS

__all__ = ["ACCOUNTS", "JOBS", "ApiException", "ApiKubeWriter", "KubeWriter", "Resource"]

# A LIST answered with each object's metadata alone, or whole by a server that cannot.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
# How long one page of a LIST may take before the auditor gives up on it for this pass.
LIST_TIMEOUT_SECONDS = 60

# Where an Event about a cluster-scoped object goes (an Event itself is always namespaced).
CLUSTER_EVENTS_NAMESPACE = "default"


@dataclass(frozen=True)
class Resource:
    """A kind of object the operator writes (all in ``aijobs.io/v1alpha1``)."""

    kind: str
    plural: str
    namespaced: bool
    status_metric: str  # the ``aijobs_operator_api_writes_total`` label of its status patches


JOBS = Resource(KIND, PLURAL, namespaced=True, status_metric="status")
ACCOUNTS = Resource(ACCOUNT_KIND, ACCOUNT_PLURAL, namespaced=False, status_metric="account-status")


def stale(exc: ApiException) -> bool:
    """The write was refused because the object changed since the copy it was decided on: a 409
    (a resourceVersion precondition), or the 422 kube-apiserver answers when a JSON patch's
    ``test`` op fails, which names no causes (a 422 refusing the object by its schema or a
    validating policy names them, and is no race: trying again would be refused again)."""
    if exc.status == 409:
        return True
    if exc.status != 422:
        return False
    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return True  # no Status body (as the simulator's twin raises): nothing names a cause
    return not details.get("causes")


class KubeWriter(Protocol):
    """Every write the operator makes. ``namespace`` is None for a cluster-scoped object; each
    method writes an AIImageJob unless ``resource`` names another kind."""

    async def job_uids(self) -> set[str]:
        """The uids of every AIImageJob the API server stores now, in any namespace, read from it
        (a consistent LIST, in pages), not from the operator's cache: a job being deleted is
        still there. What the auditor confirms before it undoes a job it believes gone."""
        ...

    async def patch_status(
        self,
        namespace: str | None,
        name: str,
        status: dict[str, Any],
        resource: Resource = JOBS,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge ``status`` into the object's status subresource; the object as stored after.
        With ``resource_version``, only if the object is still at that version, else
        :class:`ApiException` 409 (a write decided on a copy that something else changed since)."""
        ...

    async def delete(self, namespace: str | None, name: str, uid: str, resource: Resource = JOBS) -> bool:
        """Delete the object, only if it is still the one with ``uid`` (a job re-created under the
        same name is never deleted for its predecessor). True if this call deleted it or began
        its deletion (finalizers then run as for any deletion); False if it was gone or is
        another object now."""
        ...

    async def add_finalizer(
        self, body: dict[str, Any], finalizer: str, resource: Resource = JOBS
    ) -> dict[str, Any]:
        """Add ``finalizer``, only if the object is still at ``body``'s resourceVersion (else
        :class:`ApiException`); the object as stored after."""
        ...

    async def remove_finalizer(self, body: dict[str, Any], finalizer: str, resource: Resource = JOBS) -> None:
        """Remove ``finalizer`` if present; an object already gone is not an error."""
        ...

    async def event(
        self, body: dict[str, Any], type_: str, reason: str, message: str, resource: Resource = JOBS
    ) -> None:
        """A Kubernetes Event on the object (what ``kubectl describe`` shows). Best effort."""
        ...


class ApiKubeWriter:
    """:class:`KubeWriter` over the API server."""

    # Objects per page of a LIST: pages keep each answer (and the API server's work) bounded.
    PAGE = 500

    def __init__(self, api: k8s.ApiClient, component: str = "aijobs-operator") -> None:
        self._custom = k8s.CustomObjectsApi(api)
        self._core = k8s.CoreV1Api(api)
        self._component = component

    async def job_uids(self) -> set[str]:
        # The whole cluster, whatever the operator watches: a watch list may hold globs (kopf's
        # ``team-*``) or have changed since a job was charged, and a job found anywhere is not
        # gone (uids are unique cluster-wide; the chart's ClusterRole lists every namespace).
        uids: set[str] = set()
        token: str | None = None
        while True:
            # No resourceVersion: a consistent read (of etcd, or of a watch cache the API
            # server has proven current), never a stale one.
            page = await asyncio.to_thread(self._list_jobs, token)
            uids.update(item["metadata"]["uid"] for item in page.get("items") or [])  # null: none
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return uids

    def _list_jobs(self, token: str | None) -> dict[str, Any]:
        # Metadata only (the API server's PartialObjectMetadataList) where the server can: a uid
        # is all that is read, and a job's status (its saga log) is most of its bytes.
        paging: dict[str, Any] = {
            "limit": self.PAGE,
            "_headers": {"Accept": METADATA_ONLY},
            "_request_timeout": LIST_TIMEOUT_SECONDS,
        }
        if token:
            paging["_continue"] = token
        return cast(dict[str, Any], self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **paging))

    async def patch_status(
        self,
        namespace: str | None,
        name: str,
        status: dict[str, Any],
        resource: Resource = JOBS,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        METRICS.api_writes.labels(resource.status_metric).inc()
        patch: dict[str, Any] = {"status": status}
        if resource_version is not None:  # the API server's optimistic lock: 409 if it moved on
            patch["metadata"] = {"resourceVersion": resource_version}
        if resource.namespaced:
            assert namespace is not None, f"a {resource.kind} is namespaced"
            body = await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                resource.plural,
                name,
                patch,
            )
        else:
            body = await asyncio.to_thread(
                self._custom.patch_cluster_custom_object_status,
                GROUP,
                VERSION,
                resource.plural,
                name,
                patch,
            )
        return cast(dict[str, Any], body)

    async def delete(self, namespace: str | None, name: str, uid: str, resource: Resource = JOBS) -> bool:
        METRICS.api_writes.labels("delete").inc()
        options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid))
        try:
            if resource.namespaced:
                assert namespace is not None, f"a {resource.kind} is namespaced"
                await asyncio.to_thread(
                    self._custom.delete_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    resource.plural,
                    name,
                    body=options,
                )
            else:
                await asyncio.to_thread(
                    self._custom.delete_cluster_custom_object,
                    GROUP,
                    VERSION,
                    resource.plural,
                    name,
                    body=options,
                )
        except ApiException as exc:
            if exc.status in (404, 409):  # gone, or the uid precondition failed: another object
                return False
            raise
        return True

    async def add_finalizer(
        self, body: dict[str, Any], finalizer: str, resource: Resource = JOBS
    ) -> dict[str, Any]:
        meta = body["metadata"]
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        ]
        if meta.get("finalizers"):
            ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer})
        else:
            ops.append({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]})
        return await self._json_patch(meta, ops, resource)

    async def remove_finalizer(self, body: dict[str, Any], finalizer: str, resource: Resource = JOBS) -> None:
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
            await self._json_patch(meta, ops, resource)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def _json_patch(
        self, meta: dict[str, Any], ops: list[dict[str, Any]], resource: Resource
    ) -> dict[str, Any]:
        METRICS.api_writes.labels("finalizer").inc()
        patch = "application/json-patch+json"
        if resource.namespaced:
            body = await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                meta["namespace"],
                resource.plural,
                meta["name"],
                ops,
                _content_type=patch,
            )
        else:
            body = await asyncio.to_thread(
                self._custom.patch_cluster_custom_object,
                GROUP,
                VERSION,
                resource.plural,
                meta["name"],
                ops,
                _content_type=patch,
            )
        return cast(dict[str, Any], body)

    async def event(
        self, body: dict[str, Any], type_: str, reason: str, message: str, resource: Resource = JOBS
    ) -> None:
        meta = body["metadata"]
        namespace = meta["namespace"] if resource.namespaced else CLUSTER_EVENTS_NAMESPACE
        now = dt.datetime.now(dt.UTC)
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(name=f"{meta['name']}.{uuid.uuid4().hex[:12]}", namespace=namespace),
            involved_object=k8s.V1ObjectReference(
                api_version=API_VERSION,
                kind=resource.kind,
                name=meta["name"],
                namespace=meta["namespace"] if resource.namespaced else None,
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
            await asyncio.to_thread(self._core.create_namespaced_event, namespace, event)
        except ApiException:
            METRICS.event_failures.inc()
