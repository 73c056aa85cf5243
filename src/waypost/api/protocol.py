"""uvicorn's httptools protocol with a deadline on reading each request.

uvicorn times out idle keep-alive connections but not a client that connects
and then sends its request a byte at a time, or nothing at all (slowloris):
each such connection would hold a socket until the file limit runs out. Here
every connection must deliver a whole request, headers and body, within
`read_timeout` seconds of connecting or of starting that request, or it is
closed. One timer per connection, re-armed lazily (see `_arm`), rather than
a timeout around every body read, also keeps the cost off the hot path; the
same timer keeps uvicorn's keep-alive timeout (an idle connection is closed
`timeout_keep_alive` seconds after its last answer).

It also hands each request a future that resolves when the connection is lost
(scope["extensions"]["waypost.connection_lost"]): a blocking query whose client
went away stops waiting at once instead of holding a task for up to ten
minutes, so clients that open and drop long-polls cannot pile tasks up. One
future per connection, no task per query.

And it limits the connections one client address may hold (Consul's
`http_max_conns_per_client`, 200 by default): one client holding 21,000
blocking queries used to take every file descriptor and lock everyone else
out. A connection past the limit gets `429 Too Many Requests` and is closed
before anything of it is read.

And, given a `FastReads` (api/fastpath.py), it answers the discovery reads
that one understands without starting an ASGI task: uvicorn has parsed the
request and queued it behind any pipelined predecessor; where it would start
the task, the fast path answers or parks the request instead, or declines and
the task starts as before. Given a `FastWrites` (api/fastwrite.py), the
agent's hot writes are taken the same way: their body is collected here and
the answer written without uvicorn's cycle.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .fanout import plain_fd
from .fastpath import FastReads
from .fastwrite import FastWrites, Pending

LOST = "waypost.connection_lost"
#: seconds a TLS peer gets to answer our close_notify before the socket is cut (_close)
CLOSE_GRACE = 1.0
#: how often a closing TLS connection still sending its answer is looked at again
DRAIN_POLL = 0.1
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class ConnectionLimiter:
    """Open connections per client address, against a limit (0: none)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}
        self.refused = 0

    def acquire(self, client: str) -> bool:
        count = self.open.get(client, 0)
        if self.limit and count >= self.limit:
            self.refused += 1
            return False
        self.open[client] = count + 1
        return True

    def release(self, client: str) -> None:
        count = self.open.get(client, 0) - 1
        if count > 0:
            self.open[client] = count
        else:
            self.open.pop(client, None)

    def refusal(self) -> bytes:
        text = (
            f"Too many connections from this client: at most {self.limit} "
            "(http_max_conns_per_client)"
        ).encode()
        return _TOO_MANY % (len(text), text)


def client_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


URLS_LIMIT = 4096  # request targets remembered per protocol class
URL_KEPT_BYTES = 512  # a longer target is parsed every time, not kept


def _parse_target(target: bytes, root: str) -> tuple[str, bytes, bytes]:
    """`scope`'s path, raw_path and query_string of a request target, as
    uvicorn's on_headers_complete computes them."""
    url = httptools.parse_url(target)
    raw_path: bytes = url.path
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    return root + path, root.encode("ascii") + raw_path if root else raw_path, url.query or b""


def guarded_protocol(
    read_timeout: float,
    limiter: ConnectionLimiter | None = None,
    fast: FastReads | None = None,
    writes: FastWrites | None = None,
) -> type[HttpToolsProtocol]:
    # Request target -> (path, raw_path, query_string), as uvicorn derives
    # them: clients send the same few targets again and again (a registration,
    # a health read), and parsing one (httptools.parse_url, the decode, the
    # root path) was ~2k instructions of every request. Keyed by the target
    # and the root path. A target that does not parse is not kept (it raises
    # as before).
    urls: dict[tuple[bytes, str], tuple[str, bytes, bytes]] = {}

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None  # the one timer (see _arm)
        _fires_at = 0.0  # when it fires
        _reading_since: float | None = None  # when the request being read began
        _idle_since: float | None = None  # when the last answer ended, nothing read since
        _lost: asyncio.Future[None]
        _client: str | None = None
        _parked: Any = None  # the fast path's parked query on this connection
        _fd = -1  # fanout.plain_fd of the transport, asked once per connection
        _writing: Pending | None = None  # a fast write waiting for the rest of its body
        _tls = False  # the transport is TLS: see _close

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            # `app` is uvicorn's 503 stand-in past limit_concurrency: leave that to it.
            if writes is not None and app is self.app:
                pending = writes.take(cycle)
                if pending is not None:
                    if cycle.more_body:
                        self._writing = pending  # started by on_message_complete
                    else:
                        writes.start(pending, self.tasks)  # a pipelined one, read whole
                    return
            if fast is not None and app is self.app:
                served = fast.serve(cycle, self._fd)
                if served is not False:
                    if served is not True:
                        self._parked = served
                    return
            super()._start_asgi_task(cycle, app)

        def on_response_complete(self) -> None:
            # uvicorn's, but the keep-alive timeout is the lazy timer's (below),
            # not a loop timer armed here and cancelled by the next request.
            self._parked = None
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            flow = self.flow
            if flow.read_paused:  # FlowControl.resume_reading's own test: no call when not
                flow.resume_reading()
            if self._reading_since is not None:
                # a pipelined request whose rest we left unread while this one
                # was served: its read deadline starts now, not when it began
                self._arm()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle_since = now = self.loop.time()
                when = now + self.timeout_keep_alive
                if self._deadline is None or self._fires_at > when:  # _due's own test
                    self._due(when)

        def _unset_keepalive_if_required(self) -> None:
            self._idle_since = None  # data came: not idle (uvicorn calls this)

        def shutdown(self) -> None:
            if self._parked is not None and fast is not None:
                self._parked.cycle.keep_alive = False  # answered now, then closed
                fast.answer_now(self._parked)
            super().shutdown()
            if self._tls:  # closed now if idle, else once its answer is sent
                self._abort_when_sent()

        def _close(self) -> None:
            """Close the connection from our side.

            A TLS close sends close_notify and then waits for the peer's
            before the socket goes (asyncio's ssl_shutdown_timeout: 30 s). An
            idle keep-alive client, or one that stopped sending, does not read
            until its next request, so it never answers: the graceful shutdown
            waited its whole 10 s for such a connection, and a timed-out one
            kept its socket and its place in the per-client limit for 30 s.
            Go's server, Consul's, closes without waiting; here the peer gets
            CLOSE_GRACE to answer, then the socket is cut."""
            self.transport.close()
            if self._tls:
                self._abort_when_sent()

        def _abort_when_sent(self, sent: bool = False) -> None:
            """Cut the socket CLOSE_GRACE after the transport, closing, has
            handed the last of its answer on: never while it still holds some
            (a slow reader's large answer at shutdown). asyncio's own
            ssl_shutdown_timeout still bounds a peer that reads nothing."""
            if self._lost.done():
                return
            if not self.transport.is_closing() or self.transport.get_write_buffer_size():
                self.loop.call_later(DRAIN_POLL, self._abort_when_sent)  # still answering
            elif sent:
                self.transport.abort()
            else:
                self.loop.call_later(CLOSE_GRACE, self._abort_when_sent, True)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._lost = self.loop.create_future()
            self._tls = transport.get_extra_info("sslcontext") is not None
            if fast is not None:
                self._fd = plain_fd(transport)
            if limiter is not None:
                client = client_of(transport)
                if not limiter.acquire(client):
                    transport.write(limiter.refusal())
                    self._close()  # over TLS, a flood of these must not pile up for 30 s
                    return
                self._client = client
            self._arm()

        # The parser's per-request callbacks: uvicorn's, building the same
        # scope and cycle with the same keys and values, with less interpreter
        # work per request: one frame instead of a super() chain, the
        # extensions and the read deadline in the same call, the cycle built
        # from positional arguments (11 keywords made a dict per request).
        # ~7k of the ~60k instructions the HTTP side cost a request.
        def on_message_begin(self) -> None:
            self.url = b""
            self.expect_100_continue = False
            headers: list[tuple[bytes, bytes]] = []
            self.headers = headers
            self.scope = {
                "type": "http",
                "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
                "http_version": "1.1",
                "server": self.server,
                "client": self.client,
                "scheme": self.scheme,  # type: ignore[typeddict-item]
                "root_path": self.root_path,
                "headers": headers,
                "state": self.app_state.copy(),
                "extensions": {LOST: self._lost},  # type: ignore[dict-item]
            }
            # Not idle: a request pipelined behind one answered inside
            # data_received (the fast paths) begins with no data_received of its own.
            self._idle_since = None
            self._reading_since = now = self.loop.time()  # _arm, inlined
            self._due(now + read_timeout)

        def on_headers_complete(self) -> None:
            parser, scope = self.parser, self.scope
            version = parser.get_http_version()
            scope["method"] = parser.get_method().decode("ascii")
            if version != "1.1":
                scope["http_version"] = version
            if parser.should_upgrade() and self._should_upgrade():
                return  # data_received hands the connection to the websocket protocol
            target = (self.url, self.root_path)
            parsed = urls.get(target)
            if parsed is None:
                parsed = _parse_target(*target)
                if len(self.url) <= URL_KEPT_BYTES:  # the table stays small whatever comes
                    if len(urls) >= URLS_LIMIT:
                        urls.clear()  # targets are the clients'
                    urls[target] = parsed
            scope["path"], scope["raw_path"], scope["query_string"] = parsed
            app: Any = self.app
            limit = self.limit_concurrency
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
                app = service_unavailable
                self.logger.warning("Exceeded concurrency limit.")
            previous = self.cycle
            self.cycle = cycle = RequestResponseCycle(
                scope,
                self.transport,
                self.flow,
                self.logger,
                self.access_logger,
                self.access_log,
                self.server_state.default_headers,
                asyncio.Event(),
                self.expect_100_continue,
                version != "1.0" and parser.should_keep_alive(),
                self.on_response_complete,
            )
            if previous is None or previous.response_complete:
                self._start_asgi_task(cycle, app)
            else:  # pipelined behind an unanswered request: queued, reading paused
                self.flow.pause_reading()
                self.pipeline.appendleft((cycle, app))

        # A fast write's body goes straight into its cycle: no ASGI task will
        # ever wait on the cycle's event (so it is not set, ~1k each time),
        # and `take` admitted only a Content-Length within uvicorn's high
        # water mark, so there is no reading to pause.
        def on_body(self, body: bytes) -> None:
            pending = self._writing
            if pending is not None and pending[0] is self.cycle:
                self.cycle.body += body
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._reading_since = None  # read whole: its timer finds nothing to do
            pending = self._writing
            if pending is not None and pending[0] is self.cycle and writes is not None:
                self._writing = None
                self.cycle.more_body = False
                writes.start(pending, self.tasks)
                return
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:  # the marks need no clearing: nothing reads them now
                self._deadline.cancel()
                self._deadline = None
            self._writing = None  # its body never came: nothing was done
            if self._parked is not None and fast is not None:
                fast.release(self._parked)
                self._parked = None
            if self._client is not None and limiter is not None:
                limiter.release(self._client)
                self._client = None
            if not self._lost.done():
                self._lost.set_result(None)
            super().connection_lost(exc)

        # The read deadline and the keep-alive timeout: one timer per
        # connection, re-armed lazily. A request marks when its reading began
        # and ends the mark when read whole; an answer marks when the
        # connection went idle and the next data ends that mark. The timer,
        # when it fires, closes the connection if a mark is past its deadline,
        # and otherwise waits for the nearest mark's deadline. It is moved
        # earlier only when a new deadline comes before it. Four loop timer
        # operations per request (two deadlines, each armed and cancelled)
        # were ~9k instructions of a registration; a clock read is ~100.
        def _arm(self) -> None:
            self._reading_since = now = self.loop.time()
            self._due(now + read_timeout)

        def _due(self, when: float) -> None:
            """Have the timer fire no later than `when`."""
            if self._deadline is not None:
                if self._fires_at <= when:
                    return
                self._deadline.cancel()
            self._fires_at = when
            self._deadline = self.loop.call_at(when, self._expire)

        def _expire(self, *_: Any) -> None:
            self._deadline = None
            now = self.loop.time()
            reading, idle = self._reading_since, self._idle_since
            if reading is not None and self.flow.read_paused:
                # We stopped reading it (a pipelined request waits, or the app
                # has not taken the body yet): not the client's delay. Look
                # again later; a resume from the pipeline restarts it.
                reading = None
                self._due(now + read_timeout)
            if reading is not None and now >= reading + read_timeout:
                self._close()  # a request not read whole in time
            elif idle is not None and now >= idle + self.timeout_keep_alive:
                if not self.transport.is_closing():
                    self._close()  # uvicorn's keep-alive timeout
            else:
                deadlines = []
                if reading is not None:
                    deadlines.append(reading + read_timeout)
                if idle is not None:
                    deadlines.append(idle + self.timeout_keep_alive)
                if deadlines:
                    self._due(min(deadlines))

    return GuardedHttpToolsProtocol
