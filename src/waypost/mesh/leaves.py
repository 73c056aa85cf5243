"""This agent's leaf certificates: signed on demand, renewed before they expire.

The first agent to start on a store writes the CA's root (catalog/connect.py
`init_ca`, through the one write path); every agent then signs leaves with
it. A leaf is kept per service and signed again when 60 to 80% of its
lifetime has passed (a timer, as Consul's agent renews at a random point of
the leaf's life) or when the active root changes. Each new leaf gets a new
index and wakes whoever waits for it: the blocking leaf endpoint and the xDS
server, which pushes the new secret over SDS so Envoy rotates without a
restart or a listener drain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable

from ..catalog import Catalog
from ..catalog import connect as plans
from ..catalog.model import CARoot
from ..catalog.watch import ROOTS, Topic
from ..storage import Entry
from . import ca

log = logging.getLogger("waypost.mesh")

DEFAULT_LEAF_TTL = 72 * 3600.0
RENEW_AT = (0.6, 0.8)  # renew at a random point of this share of a leaf's lifetime

Listener = Callable[[], None]


class Leaves:
    """Leaf certificates by service, with the index blocking reads compare against."""

    def __init__(
        self,
        catalog: Catalog,
        datacenter: str,
        ttl: float = DEFAULT_LEAF_TTL,
        rng: random.Random | None = None,
    ) -> None:
        self.catalog = catalog
        self.datacenter = datacenter
        self.ttl = ttl
        self.rng = rng or random.Random()
        self.index = 0  # moves with every leaf signed
        self.signed = 0
        self._leaves: dict[str, tuple[ca.Leaf, int]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._changed: asyncio.Future[None] | None = None
        self._listeners: list[Listener] = []
        self._root_id = ""

    async def start(self) -> CARoot:
        """Make sure the CA has a root (writing one if this is the first agent)."""
        now = dt.datetime.now(dt.UTC)
        root = await self.catalog.write(plans.init_ca, ca.new_root(ca.new_trust_domain(), now))
        self._root_id = root.id
        self.catalog.subscribe(self._follow)
        return root

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def subscribe(self, listener: Listener) -> None:
        """Call `listener()` after every leaf signed again (renewal, new root)."""
        self._listeners.append(listener)

    def root(self) -> CARoot:
        root = self.catalog.state.active_root()
        if root is None:
            raise RuntimeError("the CA has no active root: Leaves.start() was not awaited")
        return root

    @property
    def trust_domain(self) -> str:
        return self.root().trust_domain

    def leaf(self, service: str) -> tuple[ca.Leaf, int]:
        """The current leaf of `service` and its index; signs one if there is none.

        Raises:
            ValidationError: the name cannot be put in a certificate.
        """
        found = self._leaves.get(service)
        if found is not None and found[0].root_id == self.root().id:
            return found
        return self._sign(service)

    async def wait(self, service: str, min_index: int, timeout: float) -> tuple[ca.Leaf, int]:
        """The leaf once its index passes `min_index`, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        leaf = self.leaf(service)
        while leaf[1] <= min_index and (remaining := deadline - loop.time()) > 0:
            if self._changed is None or self._changed.done():
                self._changed = loop.create_future()
            await asyncio.wait([self._changed], timeout=remaining)
            leaf = self.leaf(service)
        return leaf

    def _sign(self, service: str) -> tuple[ca.Leaf, int]:
        now = dt.datetime.now(dt.UTC)
        leaf = ca.sign_leaf(
            self.root(), self.datacenter, service, now, dt.timedelta(seconds=self.ttl)
        )
        self.index = max(self.index + 1, self.catalog.state.index)
        self.signed += 1
        self._leaves[service] = (leaf, self.index)
        self._schedule_renewal(service)
        return self._leaves[service]

    def _schedule_renewal(self, service: str) -> None:
        old = self._timers.pop(service, None)
        if old is not None:
            old.cancel()
        delay = self.ttl * self.rng.uniform(*RENEW_AT)
        loop = asyncio.get_running_loop()
        self._timers[service] = loop.call_later(delay, self._renew, service)

    def _renew(self, service: str) -> None:
        self._timers.pop(service, None)
        log.info("renewing the leaf certificate of %s", service)
        self._sign(service)
        self._wake()

    def _follow(self, topics: set[Topic], entries: list[Entry]) -> None:
        """A new active root: every leaf is signed again by it."""
        if ROOTS not in topics:
            return
        root = self.catalog.state.active_root()
        if root is None or root.id == self._root_id:
            return
        self._root_id = root.id
        log.warning("the CA's active root is now %s: signing every leaf again", root.id)
        for service in list(self._leaves):
            self._sign(service)
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        for listener in self._listeners:
            listener()

    def statistics(self) -> dict[str, float]:
        return {"leaf_certificates": len(self._leaves), "leaves_signed": self.signed}
