"""The read deadline and the keep-alive timeout of api/protocol.py, on one lazy timer.

A real uvicorn server with the agent's protocol class and short timeouts
(the agent's keep-alive is 75 s, too long for a test), a trivial ASGI app,
and raw sockets on loopback: an idle connection is closed after its
keep-alive timeout, a busy one is not, and a request not read whole in time
is closed by the read deadline even while the keep-alive timeout is longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
import uvicorn
from uvicorn.server import ServerState

from waypost.api import wire
from waypost.api.protocol import CLOSE_GRACE, guarded_protocol

from ..wait import until
from .test_protocol_scope import Transport

READ_TIMEOUT = 0.3
KEEP_ALIVE = 1.5
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def serving(asgi: Any, **config: Any) -> Iterator[tuple[uvicorn.Server, tuple[str, int]]]:
    """A real uvicorn server with the agent's protocol class, in a thread, on
    127.0.0.1: the server and its address; stopped on leaving."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    http = guarded_protocol(READ_TIMEOUT)
    server = uvicorn.Server(
        uvicorn.Config(asgi, http=http, lifespan="off", log_level="warning", **config)
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        until(lambda: server.started, timeout=10, interval=0.01)
        yield server, sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()  # the server did stop


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(app, timeout_keep_alive=KEEP_ALIVE) as (_, address):
        yield address[1]


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


# -- requests pipelined behind one the fast path answers or parks ----------------
# The protocol object driven directly (test_protocol_scope's transport), with a
# stand-in fast path: `/fast` is answered inside data_received, anything else
# parked as a blocking query would be.


class _Transport(Transport):
    closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Parked:
    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle


class _Fast:
    def serve(self, cycle: Any, fd: int) -> Any:
        if cycle.scope["path"] == "/fast":
            wire.finish(cycle, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            return True
        return _Parked(cycle)

    def release(self, parked: Any) -> None:
        pass

    def answer_now(self, parked: Any) -> None:
        pass


async def _refused(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("every request here is the fast path's")


def _connected(read_timeout: float, keep_alive: float) -> tuple[Any, _Transport]:
    config = uvicorn.Config(_refused, timeout_keep_alive=keep_alive)  # type: ignore[arg-type]
    config.load()
    protocol_class = guarded_protocol(read_timeout, fast=_Fast())  # type: ignore[arg-type]
    protocol = protocol_class(  # type: ignore[call-arg]
        config, ServerState(), {"lifespan": "state"}, _loop=asyncio.get_running_loop()
    )
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_query_pipelined_behind_a_fast_answer_is_not_idle() -> None:
    """The first request is answered inside data_received; the blocking query
    in the same packet is parked: the keep-alive timeout must not close it."""
    protocol, transport = _connected(read_timeout=30, keep_alive=0.2)
    protocol.data_received(
        b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /v1/catalog/services?index=5&wait=5m HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert protocol._parked is not None
    await asyncio.sleep(0.5)
    assert not transport.closed


async def test_a_request_we_left_unread_behind_a_parked_query_keeps_its_connection() -> None:
    """A PUT pipelined behind a parked query, its body half sent: reading is
    paused by us (uvicorn's pipeline), so its read deadline must wait."""
    protocol, transport = _connected(read_timeout=0.2, keep_alive=75)
    protocol.data_received(
        b"GET /v1/catalog/services?index=5&wait=5m HTTP/1.1\r\nHost: a\r\n\r\n"
        b"PUT /v1/kv/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello"
    )
    assert transport.paused and len(protocol.pipeline) == 1
    await asyncio.sleep(0.6)
    assert not transport.closed


BIG = 4 * 1024 * 1024


async def big(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"content-length", str(BIG).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"x" * BIG})


def test_a_shutdown_cuts_a_tls_socket_only_after_its_answer_is_sent(tmp_path: Any) -> None:
    """At shutdown a TLS connection the agent closes is cut CLOSE_GRACE after
    its transport has handed its last byte on (a peer that never answers
    close_notify must not hold the shutdown), never while it still holds
    part of an answer: a slow reader of 4 MiB that reads nothing for longer
    than the grace still gets all of it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "cert.pem"))
    with serving(big, ssl_certfile=str(tmp_path / "cert.pem")) as (server, address):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answer stays queued
        raw.connect(address)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(REQUEST)
            got = conn.recv(4096)
            server.should_exit = True  # the answer was handed over whole: uvicorn closes it
            time.sleep(CLOSE_GRACE * 1.5)
            conn.settimeout(10)
            while chunk := conn.recv(65536):
                got += chunk
        body = len(got.partition(b"\r\n\r\n")[2])
        assert body == BIG
