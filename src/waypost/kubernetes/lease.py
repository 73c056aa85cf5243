"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does.

Two sync replicas must not fight over the registry: only the holder of the
Lease writes. The rules (client-go's `LeaderElector` with a `LeaseLock`):

- Every `retry_period` each candidate reads the Lease. A Lease held by someone
  else is respected until `lease_duration` has passed since this candidate
  *saw it change* (its own monotonic clock, never the holder's timestamps: the
  clocks of two nodes need not agree).
- Taking or renewing is an update with the Lease's resourceVersion, so of two
  candidates racing for an expired Lease exactly one wins (409 for the other).
- The leader renews every `retry_period`; if it has not renewed for
  `renew_deadline` it stops leading (its work is cancelled) before anyone else
  may take over (`renew_deadline < lease_duration`).
- On a clean exit the leader releases the Lease (empty holder, duration 1 s),
  so a successor takes over at once; after kill -9 it takes `lease_duration`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from .._exceptions import KubernetesError
from .._kube import LEASES, collection
from .._kube.api import ApiClient

log = logging.getLogger("waypost.kubernetes")

Obj = dict[str, Any]


def micro_time(at: datetime | None = None) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease and runs `work` while holding it.

    Args:
        client: The API client.
        namespace: The Lease's namespace.
        name: The Lease's name.
        identity: This candidate (unique per replica: pod name, or host and a random part).
        lease_duration: Seconds a Lease is respected after it last changed.
        renew_deadline: Seconds the leader keeps leading without a successful renew.
        retry_period: Seconds between attempts.
    """

    def __init__(
        self,
        client: ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self.client = client
        self.path = f"{collection(LEASES, 'leases', namespace)}"
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._now = now
        self._observed: tuple[str, str] | None = None
        self._observed_at = float("-inf")
        self.leading = False
        self.terms = 0

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Campaign, lead, lose, campaign again, until cancelled (then release)."""
        try:
            while True:
                await self._acquire()
                await self._lead(work)
        finally:
            if self.terms:  # _release() checks that the Lease is still ours
                with contextlib.suppress(KubernetesError, asyncio.CancelledError):
                    await asyncio.shield(self._release())

    async def _acquire(self) -> None:
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self.retry_period)
        self.leading = True
        self.terms += 1
        log.info("leading: lease %s/%s held by %s", self.path, self.name, self.identity)
        print(f"waypost k8s-sync: leading as {self.identity}", flush=True)

    async def _lead(self, work: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.create_task(_run_work(work), name="waypost-k8s-sync-leader")
        renewed = self._now()
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.retry_period)
                if task.done():
                    break
                if await self.try_acquire_or_renew():
                    renewed = self._now()
                elif self._now() - renewed > self.renew_deadline:
                    log.warning(
                        "lost the lease %s (no renew for %.1fs)", self.name, self.renew_deadline
                    )
                    break
        finally:
            self.leading = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        print("waypost k8s-sync: stopped leading", flush=True)

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this candidate holds the Lease now."""
        try:
            lease = await self._get()
            if lease is None:
                await self.client.request("POST", self.path, body=self._lease(None))
                return True
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            self._observe(holder, str(spec.get("renewTime") or ""))
            expired = (
                self._observed_at + float(spec.get("leaseDurationSeconds") or 0) <= self._now()
            )
            if holder and holder != self.identity and not expired:
                return False
            await self.client.request("PUT", f"{self.path}/{self.name}", body=self._lease(lease))
            return True
        except KubernetesError as exc:
            if exc.code not in (409, 404):
                log.warning("leader election: %s", exc)
            return False

    def _observe(self, holder: str, renew: str) -> None:
        if (holder, renew) != self._observed:
            self._observed = (holder, renew)
            self._observed_at = self._now()

    async def _get(self) -> Obj | None:
        try:
            return await self.client.request("GET", f"{self.path}/{self.name}")
        except KubernetesError as exc:
            if exc.code == 404:
                return None
            raise

    def _lease(self, current: Obj | None) -> Obj:
        now = micro_time()
        spec = dict((current or {}).get("spec") or {})
        ours = spec.get("holderIdentity") == self.identity
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self.lease_duration)),
            renewTime=now,
            acquireTime=spec.get("acquireTime") if ours else now,
            leaseTransitions=int(spec.get("leaseTransitions") or 0)
            + (0 if ours or current is None else 1),
        )
        meta: Obj = {"name": self.name}
        if current is not None:
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    async def _release(self) -> None:
        lease = await self._get()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        body = self._lease(lease)
        body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
        await self.client.request("PUT", f"{self.path}/{self.name}", body=body)
        log.info("released the lease %s", self.name)


async def _run_work(work: Callable[[], Awaitable[None]]) -> None:
    try:
        await work()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the sync failed while leading; giving up the lease")
