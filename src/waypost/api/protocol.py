"""uvicorn's httptools protocol with a deadline on request headers.

uvicorn times out idle keep-alive connections but not a client that connects
and then sends its headers a byte at a time, or nothing at all (slowloris):
each such connection would hold a socket until the file limit runs out. Here
every connection must deliver a request's complete headers within
`header_timeout` seconds of connecting, or of starting that request, or it is
closed. Bodies have their own deadline (api/http.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def guarded_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expire(self, *_: Any) -> None:
            self._header_deadline = None
            self.transport.close()

    return GuardedHttpToolsProtocol
