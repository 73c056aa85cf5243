"""uvicorn's httptools protocol with a deadline on reading each request.

uvicorn times out idle keep-alive connections but not a client that connects
and then sends its request a byte at a time, or nothing at all (slowloris):
each such connection would hold a socket until the file limit runs out. Here
every connection must deliver a whole request, headers and body, within
`read_timeout` seconds of connecting or of starting that request, or it is
closed. One timer per request on the protocol, rather than a timeout around
every body read, also keeps the cost off the hot path.

It also hands each request a future that resolves when the connection is lost
(scope["extensions"]["waypost.connection_lost"]): a blocking query whose client
went away stops waiting at once instead of holding a task for up to ten
minutes, so clients that open and drop long-polls cannot pile tasks up. One
future per connection, no task per query.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LOST = "waypost.connection_lost"


def guarded_protocol(read_timeout: float) -> type[HttpToolsProtocol]:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _read_deadline: asyncio.TimerHandle | None = None
        _lost: asyncio.Future[None]

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._lost = self.loop.create_future()
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["extensions"] = {LOST: self._lost}  # type: ignore[dict-item]
            self._arm()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self._lost.done():
                self._lost.set_result(None)
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._read_deadline = self.loop.call_later(read_timeout, self._expire)

        def _disarm(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _expire(self, *_: Any) -> None:
            self._read_deadline = None
            self.transport.close()

    return GuardedHttpToolsProtocol
