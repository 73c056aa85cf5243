"""The read deadline and the keep-alive timeout of api/protocol.py, on one lazy timer.

A real uvicorn server with the agent's protocol class and short timeouts
(the agent's keep-alive is 75 s, too long for a test), a trivial ASGI app,
and raw sockets on loopback: an idle connection is closed after its
keep-alive timeout, a busy one is not, and a request not read whole in time
is closed by the read deadline even while the keep-alive timeout is longer.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from waypost.api.protocol import guarded_protocol

READ_TIMEOUT = 0.3
KEEP_ALIVE = 1.5
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=guarded_protocol(READ_TIMEOUT),
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def ask(conn: socket.socket) -> None:
    conn.sendall(REQUEST)
    answer = b""
    while not answer.endswith(b"\r\n\r\nok"):  # head and body may come apart
        chunk = conn.recv(4096)
        assert chunk, answer
        answer += chunk


def closed_after(conn: socket.socket, limit: float) -> float:
    """Seconds until the server closes `conn` (fails past `limit`)."""
    started = time.monotonic()
    conn.settimeout(limit)
    assert conn.recv(4096) == b""
    return time.monotonic() - started


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        ask(conn)
        took = closed_after(conn, 5)
        assert KEEP_ALIVE * 0.8 <= took < KEEP_ALIVE + 1.0


def test_a_connection_in_use_is_kept_past_the_keep_alive_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        started = time.monotonic()
        while time.monotonic() - started < KEEP_ALIVE * 1.5:  # every 0.1 s, never idle long
            ask(conn)
            time.sleep(0.1)
        ask(conn)  # still open
        assert closed_after(conn, 5) >= KEEP_ALIVE * 0.8


def test_a_stalled_request_is_closed_by_the_read_deadline_not_the_keep_alive(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        ask(conn)
        time.sleep(READ_TIMEOUT + 0.1)  # idle: the timer now waits for the far keep-alive
        conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # never finishes its headers
        took = closed_after(conn, 5)  # the timer was moved earlier for the read deadline
        assert READ_TIMEOUT * 0.8 <= took < (KEEP_ALIVE - READ_TIMEOUT - 0.1) * 0.8
