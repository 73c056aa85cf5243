"""api/fanout.py: a batch of answers written from two threads, over real
loopback connections, on uvloop's loop and on asyncio's own."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trustme
import uvloop

from waypost.api import fanout
from waypost.api.fanout import FanOut

from ..servers import recv_exactly

Loop = Callable[[Callable[[], Awaitable[None]]], None]
LOOPS: dict[str, Loop] = {
    "uvloop": lambda main: uvloop.run(main()),
    "asyncio": lambda main: asyncio.run(main()),
}


class Server(asyncio.Protocol):
    """Keeps the server side's transports, and whether each was lost."""

    def __init__(self, made: list[Server]) -> None:
        self.transport: Any = None
        self.lost = False
        made.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def open_pairs(
    count: int, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None
) -> tuple[list[Server], list[socket.socket]]:
    """`count` connections: the server's protocols, and blocking client sockets
    (read from threads, as another process would)."""
    made: list[Server] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Server(made), "127.0.0.1", 0, ssl=tls[0] if tls else None
    )
    port = server.sockets[0].getsockname()[1]
    clients = []
    for _ in range(count):
        sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 10)
        if tls:
            sock = await asyncio.to_thread(tls[1].wrap_socket, sock, server_hostname="localhost")
        clients.append(sock)
    while len(made) < count or any(s.transport is None for s in made):
        await asyncio.sleep(0.01)
    server.close()
    # Accept order is connect order on loopback, but pair them by port to be sure.
    by_port = {s.transport.get_extra_info("peername")[1]: s for s in made}
    return [by_port[c.getsockname()[1]] for c in clients], clients


async def nothing_more(servers: list[Server], clients: list[socket.socket]) -> None:
    """After what each client read: the server side closes, and nothing else
    comes (no byte written twice)."""
    for server in servers:
        server.transport.close()

    def at_eof(client: socket.socket) -> None:
        client.settimeout(10)
        assert client.recv(65536) == b"", "bytes beyond the answer"
        client.close()

    await asyncio.to_thread(lambda: [at_eof(c) for c in clients])


def read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(10)
    return recv_exactly(sock, size)


@pytest.fixture
def threads_seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """The threads that wrote with os.write (every call of fanout._write_fds)."""
    seen: set[str] = set()
    original = fanout._write_fds

    def recording(
        fds: list[int], datas: list[bytes], start: int, stop: int, written: list[int]
    ) -> None:
        if stop > start:
            seen.add(threading.current_thread().name)
        original(fds, datas, start, stop, written)

    monkeypatch.setattr(fanout, "_write_fds", recording)
    yield seen


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for localhost, and a client trusting it."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


def payload(i: int, size: int = 20_000) -> bytes:
    return f"answer {i}:".encode().ljust(size, b"x")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_large_batch_is_written_whole_from_two_threads(
    loop: str, threads_seen: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    count = fanout.PARALLEL_MIN + 10
    got: list[bytes] = []
    # The loop thread could take every chunk before the worker wakes: its
    # first waits (up to 10 s) until the worker has written one.
    worker_wrote = threading.Event()
    recorded = fanout._write_fds

    def loop_waits(
        fds: list[int], datas: list[bytes], start: int, stop: int, written: list[int]
    ) -> None:
        if threading.current_thread().name == "MainThread":
            worker_wrote.wait(10)
        recorded(fds, datas, start, stop, written)
        if threading.current_thread().name == "waypost-fanout":
            worker_wrote.set()

    monkeypatch.setattr(fanout, "_write_fds", loop_waits)

    async def main() -> None:
        servers, clients = await open_pairs(count)
        out = FanOut(threads=2)
        out.write([(s.transport, payload(i)) for i, s in enumerate(servers)])
        assert out.batches == 1
        got.extend(await asyncio.to_thread(lambda: [read_exactly(c, 20_000) for c in clients]))
        await nothing_more(servers, clients)

    LOOPS[loop](main)
    assert got == [payload(i) for i in range(count)]
    assert threads_seen == {"MainThread", "waypost-fanout"}


def test_a_thread_that_falls_behind_leaves_the_rest_to_the_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The threads take chunks as they go, not half each: a worker that loses
    its core (here, each of its chunks is held up) writes fewer of them, the
    loop thread the rest, and every answer still arrives once."""
    monkeypatch.setattr(fanout, "CHUNK", 16)
    count = fanout.PARALLEL_MIN  # eight chunks of 16, on ~260 fds
    wrote: dict[str, int] = {}
    original = fanout._write_fds

    def slow_worker(
        fds: list[int], datas: list[bytes], start: int, stop: int, written: list[int]
    ) -> None:
        name = threading.current_thread().name
        if name == "waypost-fanout":
            time.sleep(0.2)  # GIL released: the loop thread goes on meanwhile
        wrote[name] = wrote.get(name, 0) + stop - start
        original(fds, datas, start, stop, written)

    monkeypatch.setattr(fanout, "_write_fds", slow_worker)
    got: list[bytes] = []

    async def main() -> None:
        servers, clients = await open_pairs(count)
        FanOut(threads=2).write([(s.transport, payload(i, 100)) for i, s in enumerate(servers)])
        got.extend(await asyncio.to_thread(lambda: [read_exactly(c, 100) for c in clients]))
        await nothing_more(servers, clients)

    LOOPS["uvloop"](main)
    assert got == [payload(i, 100) for i in range(count)]
    assert sum(wrote.values()) == count
    assert wrote.get("waypost-fanout", 0) < count // 2 < wrote["MainThread"]


def test_a_small_batch_or_one_core_writes_through_the_transports(threads_seen: set[str]) -> None:
    async def main() -> None:
        servers, clients = await open_pairs(fanout.PARALLEL_MIN)
        small, one_core = FanOut(threads=2), FanOut(threads=1)
        small.write([(s.transport, b"small") for s in servers[:-1]])
        one_core.write([(s.transport, b"one core") for s in servers])
        assert small.batches == one_core.batches == 0
        for c in clients[:-1]:
            assert read_exactly(c, 13) == b"smallone core"
        for c in clients:
            c.close()

    LOOPS["uvloop"](main)
    assert threads_seen == set()


def test_bytes_a_transport_still_holds_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transport with queued bytes is never written beside: its peer gets
    the queued bytes, then the batch's, even when the socket has room again
    before the loop noticed."""
    monkeypatch.setattr(fanout, "PARALLEL_MIN", 2)
    big = b"q" * 8_000_000  # more than the socket buffers hold: the rest stays queued

    async def main() -> None:
        servers, clients = await open_pairs(3)
        servers[0].transport.write(big)
        assert servers[0].transport.get_write_buffer_size() > 0
        # The peer takes some, so the kernel has room while the transport
        # (whose loop is not running now) still queues the rest.
        taken = read_exactly(clients[0], 500_000)
        time.sleep(0.05)
        FanOut(threads=2).write([(s.transport, b"after") for s in servers])
        rest = await asyncio.to_thread(read_exactly, clients[0], len(big) - len(taken) + 5)
        assert rest == big[len(taken) :] + b"after"
        assert [read_exactly(c, 5) for c in clients[1:]] == [b"after", b"after"]
        await nothing_more(servers, clients)

    LOOPS["uvloop"](main)


def test_a_full_socket_gets_the_rest_through_its_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "PARALLEL_MIN", 2)
    data = [payload(i, 6_000_000) for i in range(3)]  # more than a socket takes at once

    async def main() -> None:
        servers, clients = await open_pairs(3)
        FanOut(threads=2).write([(s.transport, d) for s, d in zip(servers, data, strict=True)])
        assert any(s.transport.get_write_buffer_size() for s in servers)  # the rest, queued
        got = await asyncio.gather(
            *(
                asyncio.to_thread(read_exactly, c, len(d))
                for c, d in zip(clients, data, strict=True)
            )
        )
        assert got == data
        await nothing_more(servers, clients)

    LOOPS["uvloop"](main)


def test_a_tls_connection_is_written_through_its_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its socket carries TLS records: raw bytes there would break it."""
    monkeypatch.setattr(fanout, "PARALLEL_MIN", 2)
    server_ctx, client_ctx = tls_contexts()

    async def main() -> None:
        servers, clients = await open_pairs(3, (server_ctx, client_ctx))
        FanOut(threads=2).write([(s.transport, payload(i, 5_000)) for i, s in enumerate(servers)])
        got = await asyncio.to_thread(lambda: [read_exactly(c, 5_000) for c in clients])
        assert got == [payload(i, 5_000) for i in range(3)]
        await nothing_more(servers, clients)

    LOOPS["uvloop"](main)


def test_a_reset_connection_is_reported_by_its_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "PARALLEL_MIN", 2)

    async def main() -> None:
        servers, clients = await open_pairs(4)
        servers[1].transport.pause_reading()  # only the write can tell it of the reset
        gone = clients[1]
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # linger 0: a reset, so the next write fails
        await asyncio.sleep(0.05)
        FanOut(threads=2).write([(s.transport, b"hello") for s in servers])
        FanOut(threads=2).write([(s.transport, b"hello") for s in servers])  # it is closing now
        for _ in range(1000):  # up to 10 s: it ends at once when the loss is seen
            if servers[1].lost:
                break
            await asyncio.sleep(0.01)
        assert servers[1].lost
        assert not any(s.lost for s in servers[:1] + servers[2:])
        for c in (clients[0], *clients[2:]):
            assert read_exactly(c, 10) == b"hellohello"
            c.close()

    LOOPS["uvloop"](main)


def test_a_batch_with_nothing_to_write_beside_stays_on_the_loop_thread(
    monkeypatch: pytest.MonkeyPatch, threads_seen: set[str]
) -> None:
    """Every transport still holds queued bytes: none is written beside, so
    the worker gets nothing and the batch is not counted as two threads'."""
    monkeypatch.setattr(fanout, "PARALLEL_MIN", 2)
    big = b"q" * 8_000_000

    async def main() -> None:
        servers, clients = await open_pairs(3)
        for s in servers:
            s.transport.write(big)
        out = FanOut(threads=2)
        out.write([(s.transport, b"after") for s in servers])
        assert out.batches == 0
        got = await asyncio.gather(
            *(asyncio.to_thread(read_exactly, c, len(big) + 5) for c in clients)
        )
        assert all(g == big + b"after" for g in got)
        await nothing_more(servers, clients)

    LOOPS["uvloop"](main)
    assert threads_seen == set()


def test_no_thread_to_be_had_writes_from_the_loop_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "PARALLEL_MIN", 2)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def main() -> None:
        servers, clients = await open_pairs(4)
        out = FanOut(threads=2)
        with monkeypatch.context() as patched:
            patched.setattr(threading.Thread, "start", refuse)
            out.write([(s.transport, payload(i)) for i, s in enumerate(servers)])
            out.write([(s.transport, b"again") for s in servers])  # and it waits for no one
        assert out.batches == 0 and not out.parallel
        got = await asyncio.to_thread(lambda: [read_exactly(c, 20_005) for c in clients])
        assert got == [payload(i) + b"again" for i in range(4)]
        await nothing_more(servers, clients)

    LOOPS["uvloop"](main)


@pytest.mark.parametrize("loop", LOOPS)
def test_only_a_plain_tcp_transport_has_an_fd_to_write_beside(loop: str) -> None:
    """plain_fd, which the protocol asks once per connection: the socket's fd
    for plain TCP, -1 for TLS (its socket carries records, not these bytes)."""
    server_ctx, client_ctx = tls_contexts()

    async def main() -> None:
        plain, plain_clients = await open_pairs(1)
        tls, tls_clients = await open_pairs(1, (server_ctx, client_ctx))
        sock = plain[0].transport.get_extra_info("socket")
        assert fanout.plain_fd(plain[0].transport) == sock.fileno() >= 0
        assert fanout.plain_fd(tls[0].transport) == -1
        await nothing_more(plain + tls, plain_clients + tls_clients)

    LOOPS[loop](main)
