"""A TCP proxy on loopback for gRPC (HTTP/2) traffic, that can be told to misbehave.

    proxy = await FaultProxy("127.0.0.11:2379").start()
    url = f"etcd://{proxy.endpoint}"      # the client talks to the proxy
    proxy.stall()                          # hold every byte, both ways, until resume()
    cut = proxy.cut_after(b"some-key")     # see below
    await cut.wait(); ...; proxy.resume()

It reads the HTTP/2 frames on both sides of each connection (9-byte header:
length, type, flags, stream id), so it can tell where a request ends and
where its answer starts without understanding HPACK or protobuf.

`cut_after(marker)`: the next client request whose DATA carries `marker`
(a key name: protobuf carries keys as raw bytes) is forwarded to etcd in
full; when etcd's answer on that stream starts (its HEADERS frame), the
answer is dropped and the connection is closed on both sides. So the request
reached etcd and was processed, but the client never hears back: the
ambiguous failure a lost connection causes. The proxy then holds every
connection (old and new) as `stall()` does, until `resume()`, so a test can
make other writes before the client's retry gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA: Final = 0x0
HEADERS: Final = 0x1
ANSWER_WAIT: Final = 5.0  # cut anyway if etcd has not answered a marked request by then


class _Connection:
    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.marked_stream = 0  # stream id of the request carrying the marker
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()


class FaultProxy:
    """Forwards connections to one `host:port` upstream; see the module docstring."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        up_host, _, up_port = upstream.rpartition(":")
        self.upstream = (up_host, int(up_port))
        self.host = host
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._marker: bytes | None = None
        self._cut: asyncio.Event | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.cuts = 0
        self.connections = 0

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        return self

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{self.host}:{port}"

    # -- faults ----------------------------------------------------------------

    def stall(self) -> None:
        """Stop forwarding in both directions (connections stay open, bytes wait)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again, starting with everything held."""
        self._flowing.set()

    def cut_after(self, marker: bytes) -> asyncio.Event:
        """Arm a cut on the next request carrying `marker`; the event is set once it is done."""
        self._marker = marker
        self._cut = asyncio.Event()
        return self._cut

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.resume()
        for connection in list(self._connections):
            connection.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    # -- forwarding ------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = _Connection(self, writer)
        self._connections.add(connection)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            connection.close()
            self._connections.discard(connection)
            return
        connection.upstream = up_writer
        for coro in (
            self._pump_requests(connection, reader, up_writer),
            self._pump_answers(connection, up_reader, writer),
        ):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump_requests(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            preface = await reader.readexactly(len(PREFACE))
            await self._forward(writer, preface)
            while not connection.closed:
                frame_type, _, stream, frame = await _read_frame(reader)
                armed = self._marker is not None and not connection.marked_stream
                if armed and frame_type == DATA and self._marker in frame:
                    connection.marked_stream = stream
                    self._marker = None  # one cut per arming
                    self._spawn(self._cut_when_answered(connection))
                await self._forward(writer, frame)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            connection.close()
            self._connections.discard(connection)

    async def _pump_answers(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while not connection.closed:
                frame_type, _, stream, frame = await _read_frame(reader)
                marked = connection.marked_stream
                if marked and stream == marked and frame_type == HEADERS:
                    self._do_cut(connection)  # etcd has processed the request: lose its answer
                    return
                await self._forward(writer, frame)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            connection.close()

    async def _cut_when_answered(self, connection: _Connection) -> None:
        """Cut anyway if etcd keeps the marked request unanswered for long."""
        await asyncio.sleep(ANSWER_WAIT)
        if not connection.closed:
            self._do_cut(connection)

    def _do_cut(self, connection: _Connection) -> None:
        self.stall()  # hold the client's retry until the test resumes
        connection.close()
        self.cuts += 1
        if self._cut is not None:
            self._cut.set()

    async def _forward(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        await self._flowing.wait()
        writer.write(data)
        await writer.drain()

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    """One HTTP/2 frame: (type, flags, stream id, the whole frame's bytes)."""
    header = await reader.readexactly(9)
    length = int.from_bytes(header[:3], "big")
    payload = await reader.readexactly(length) if length else b""
    stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
    return header[3], header[4], stream, header + payload
