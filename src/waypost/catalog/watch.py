"""Watch topics: how a blocking query sleeps until something it read changes.

A read names the topics it touched (`("svc", "payment")`, `("node", "n1")`,
`SERVICES`...). A write wakes exactly the topics it changed. All waiters of a
topic share one future, replaced each time it fires, so ten thousand blocking
queries on one service cost one future and one wake-up pass, and a change to
service B never wakes a watcher of service A.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

Topic = tuple[str, str]

SERVICES: Final[Topic] = ("services", "")
NODES: Final[Topic] = ("nodes", "")
CHECKS: Final[Topic] = ("checks", "")
ROOTS: Final[Topic] = ("connect", "roots")  # the CA's roots
INTENTIONS: Final[Topic] = ("connect", "intentions")


def service_topic(name: str) -> Topic:
    return ("svc", name)


def node_topic(name: str) -> Topic:
    return ("node", name)


def connect_topic(name: str) -> Topic:
    """The sidecars that front service `name` (`/v1/health/connect/<name>`, EDS)."""
    return ("connect", "svc:" + name)


class Watches:
    def __init__(self) -> None:
        self._futures: dict[Topic, asyncio.Future[None]] = {}
        self._waiters: dict[Topic, int] = {}
        self.closed = False

    def close(self) -> None:
        """Wake every waiter for good: a shutting-down agent answers its
        blocking queries at once instead of holding them for their wait."""
        self.closed = True
        self.notify(list(self._futures))

    def future(self, topic: Topic) -> asyncio.Future[None]:
        fut = self._futures.get(topic)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._futures[topic] = fut
        return fut

    def listen(self, topic: Topic) -> asyncio.Future[None]:
        """The topic's shared future, counted as one waiter until `unlisten`:
        for waiters that are callbacks on that future rather than tasks (the
        HTTP fast path parks thousands of connections on one registration)."""
        self._waiters[topic] = self._waiters.get(topic, 0) + 1
        return self.future(topic)

    def unlisten(self, topic: Topic) -> None:
        self._release((topic,))

    def notify(self, topics: Iterable[Topic]) -> None:
        for topic in topics:
            fut = self._futures.pop(topic, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def wait(
        self, topics: Iterable[Topic], timeout: float, abandon: asyncio.Future[None] | None = None
    ) -> bool:
        """Sleep until one of `topics` fires or `abandon` resolves (True), or
        `timeout` passes (False)."""
        topics = tuple(topics)
        futures = {self.future(t) for t in topics}
        if abandon is not None:
            futures.add(abandon)
        for topic in topics:
            self._waiters[topic] = self._waiters.get(topic, 0) + 1
        try:
            done, _ = await asyncio.wait(
                futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._release(topics)
        return bool(done)

    def _release(self, topics: tuple[Topic, ...]) -> None:
        """Drop a topic's future once nobody waits on it: clients name topics
        (any service name), so unfired futures must not accumulate."""
        for topic in topics:
            left = self._waiters[topic] - 1
            if left:
                self._waiters[topic] = left
                continue
            del self._waiters[topic]
            fut = self._futures.get(topic)
            if fut is not None and not fut.done():
                del self._futures[topic]
                fut.cancel()

    def statistics(self) -> dict[str, float]:
        return {"watched_topics": len(self._futures)}
