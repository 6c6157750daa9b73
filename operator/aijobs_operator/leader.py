"""Leader election with a Kubernetes Lease, held *before* kopf starts processing.

kopf has no leader election of its own (peering with equal priorities freezes both replicas), so
a replica first acquires the Lease ``aijobs-operator``; a standby keeps trying. The leader
renews it every third of its duration; if it cannot renew before the Lease would expire, it
exits at once (fail-stop), so two replicas never both drive a job. A standby takes over once the
Lease expires: within ``lease_seconds`` plus one retry period of the leader's death.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from aijobs_operator.health import Vitals
from aijobs_operator.metrics import METRICS

log = logging.getLogger("aijobs.operator.leader")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaseElector:
    def __init__(
        self,
        api: k8s.ApiClient,
        name: str,
        namespace: str,
        identity: str,
        seconds: int,
        vitals: Vitals | None = None,
    ) -> None:
        self._api = k8s.CoordinationV1Api(api)
        self.name, self.namespace, self.identity, self.seconds = name, namespace, identity, seconds
        self.vitals = vitals or Vitals(seconds, ())  # each round is recorded here for the probes

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease (optimistic concurrency on resourceVersion)."""
        now = _now()
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=k8s.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.seconds,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                self._api.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False
                raise
        spec = lease.spec
        assert spec is not None
        mine = spec.holder_identity == self.identity
        renewed = spec.renew_time or spec.acquire_time or now
        expired = renewed + dt.timedelta(seconds=spec.lease_duration_seconds or self.seconds) < now
        if not (mine or expired or not spec.holder_identity):
            return False
        if not mine:
            spec.holder_identity = self.identity
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.renew_time = now
        spec.lease_duration_seconds = self.seconds
        try:
            self._api.replace_namespaced_lease(self.name, self.namespace, lease)
            return True
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote it first
                return False
            raise

    def acquire(self, stop: float | None = None) -> bool:
        """Block until this replica leads (or ``stop`` seconds pass)."""
        deadline = None if stop is None else time.monotonic() + stop
        waiting_logged = False
        while deadline is None or time.monotonic() < deadline:
            try:
                if self.try_acquire():
                    self.vitals.lease_round("leader", answered=True)
                    log.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)
                    METRICS.leader.set(1)
                    return True
                self.vitals.lease_round("standby", answered=True)
            except ApiException as exc:
                self.vitals.lease_round("standby", answered=False, error=str(exc.reason))
                log.warning("lease: %s", exc.reason)
            if not waiting_logged:
                log.info("standing by: another replica holds lease %s/%s", self.namespace, self.name)
                waiting_logged = True
            time.sleep(max(1.0, self.seconds / 5))
        return False

    async def keep(self) -> None:
        """Renew until it fails for longer than the Lease lasts; then stop this process."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                if await asyncio.to_thread(self.try_acquire):
                    last_ok = time.monotonic()
                    self.vitals.lease_round("leader", answered=True)
                    continue
                log.error("lost lease %s/%s to another replica; exiting", self.namespace, self.name)
            except ApiException as exc:
                self.vitals.lease_round("leader", answered=False, error=str(exc.reason))
                log.warning("lease renewal failed: %s", exc.reason)
                if time.monotonic() - last_ok < self.seconds * 2 / 3:
                    continue
                log.error("could not renew lease in time; exiting so that a standby can lead")
            METRICS.leader.set(0)
            os._exit(3)  # fail-stop: never keep driving jobs without the lease
