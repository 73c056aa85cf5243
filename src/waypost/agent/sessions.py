"""Invalidates sessions, as Consul's leader does: TTL, checks, node.

A session goes when its TTL passes twice over without a renew, when one of
its checks goes critical or away, or when its node leaves the catalog; its
locks are then released (or its keys deleted) in the same commit, through
`kvwrites.session_invalidate`, and lock delay starts (catalog/kv.py).

Who acts: the agent whose node the session names, like the health runner
for its checks. When that node has no live agent (it died, or it is a node
registered through the catalog API), every live agent acts; the plan's
conditions make the second attempt a no-op. Every agent keeps a TTL timer for
every session, restarted whenever it sees the session applied with a new
renewal count (renewals are writes, so they reach every agent of a cluster);
a timer that fires acts only if this agent is responsible then. Timers start
afresh when an agent starts, so a restart gives sessions their full TTL again
(Consul's new leader does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .._exceptions import StorageError
from ..catalog import Catalog, codec, kvwrites
from ..catalog.sessions import SESSION_PREFIX, Session
from ..storage import Entry

log = logging.getLogger("waypost.sessions")

RETRY = 0.5  # seconds between attempts at an invalidation the store refused


class SessionRunner:
    def __init__(self, catalog: Catalog, node: str) -> None:
        self.catalog = catalog
        self.state = catalog.state
        self.node = node
        self._timers: dict[str, tuple[int, asyncio.TimerHandle]] = {}  # id -> (renewals, timer)
        self._pending: dict[str, asyncio.Task[None]] = {}
        self.invalidated = 0
        self.last_invalidation_ms = 0.0

    async def start(self) -> None:
        for session in self.state.sessions.all():
            self._track(session)
        self._check_nodes({s.node for s in self.state.sessions.all()})
        self.catalog.subscribe(self._follow)

    async def stop(self) -> None:
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- following the catalog -----------------------------------------------

    def _follow(self, topics: object, entries: list[Entry]) -> None:
        nodes: set[str] = set()
        for entry in entries:
            key = entry.key
            if key.startswith(SESSION_PREFIX):
                self._session_changed(key[len(SESSION_PREFIX) :])
            elif key[:2] in ("c/", "l/", "n/"):
                nodes.add(codec.split_key(key)[1][0])
        if nodes:
            self._check_nodes(nodes)

    def _session_changed(self, session_id: str) -> None:
        session = self.state.sessions.get(session_id)
        if session is None:
            old = self._timers.pop(session_id, None)
            if old is not None:
                old[1].cancel()
            return
        self._track(session)
        self._check_session(session)

    def _track(self, session: Session) -> None:
        """(Re)start the TTL timer when the session is new or was renewed."""
        if not session.ttl:
            return
        current = self._timers.get(session.id)
        if current is not None and current[0] == session.renewals:
            return
        if current is not None:
            current[1].cancel()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(session.ttl * 2, self._expired, session.id, session.renewals)
        self._timers[session.id] = (session.renewals, timer)

    def _expired(self, session_id: str, renewals: int) -> None:
        self._timers.pop(session_id, None)
        session = self.state.sessions.get(session_id)
        if session is not None and self._responsible(session):
            self._invalidate(session, "TTL expired", renewals)

    def _check_nodes(self, nodes: set[str]) -> None:
        for node in nodes:
            for session in self.state.sessions.on_node(node):
                self._check_session(session)

    def _check_session(self, session: Session) -> None:
        reason = self._broken(session)
        if reason and self._responsible(session):
            self._invalidate(session, reason, None)

    def _broken(self, session: Session) -> str:
        """Why the session can no longer stand, or "" if it can."""
        if self.state.node(session.node) is None:
            return f"node {session.node} is gone"
        for check_id in session.checks():
            check = self.state.check(session.node, check_id)
            if check is None:
                return f"check {check_id} is gone"
            if check.status == "critical":
                return f"check {check_id} is critical"
        return ""

    def _responsible(self, session: Session) -> bool:
        return session.node == self.node or not self.state.is_live(session.node)

    # -- invalidating ----------------------------------------------------------

    def _invalidate(self, session: Session, reason: str, renewals: int | None) -> None:
        if session.id in self._pending:
            return
        task = asyncio.create_task(
            self._write(session.id, reason, renewals), name=f"waypost-session-{session.id}"
        )
        self._pending[session.id] = task
        task.add_done_callback(lambda _: self._pending.pop(session.id, None))

    async def _write(self, session_id: str, reason: str, renewals: int | None) -> None:
        started = time.perf_counter()
        while True:
            try:
                done = await self.catalog.write(kvwrites.session_invalidate, session_id, renewals)
                break
            except StorageError as exc:
                log.warning("could not invalidate session %s yet (%s): %s", session_id, reason, exc)
                await asyncio.sleep(RETRY)
        if done:
            self.invalidated += 1
            self.last_invalidation_ms = (time.perf_counter() - started) * 1000
            log.info("session %s invalidated: %s", session_id, reason)

    def statistics(self) -> dict[str, float]:
        return {
            "sessions_tracked": len(self._timers),
            "sessions_invalidated": self.invalidated,
            "last_invalidation_ms": self.last_invalidation_ms,
        }
