"""Whole answers written behind uvicorn's cycle, for the protocol's fast paths.

The read fast path (fastpath.py) and the write fast path (fastwrite.py)
answer without running uvicorn's `send()`: both encode the bytes uvicorn
would write and then leave its `RequestResponseCycle` as a sent response
leaves it, so that keep-alive, pipelining and the next request go on as
uvicorn's own code expects.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from . import http

# Requests whose body uvicorn's cycle must read (a chunked body, `100 Continue`
# before it): neither fast path takes them.
CYCLE_BODY_HEADERS = frozenset({b"transfer-encoding", b"expect"})


def encode(response: http.Response, defaults: list[tuple[bytes, bytes]], keep: bool) -> bytes:
    """The bytes uvicorn writes for `response` (status line, its default
    headers, the response's, Content-Length, Connection: close when the
    connection ends), as one buffer."""
    parts = [STATUS_LINE[response.status]]
    for name, value in (*defaults, *response.headers):
        parts += (name, b": ", value, b"\r\n")
    parts += (b"content-length: ", str(len(response.body)).encode(), b"\r\n")
    if not keep:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", response.body)
    return b"".join(parts)


def finish(cycle: RequestResponseCycle, data: bytes) -> None:
    """Write `data` and do what uvicorn's cycle does once it has sent a whole response."""
    cycle.transport.write(data)
    finished(cycle)


def finished(cycle: RequestResponseCycle) -> None:
    """What uvicorn's cycle does once its whole response has been written."""
    cycle.response_started = cycle.response_complete = True
    cycle.waiting_for_100_continue = False
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
