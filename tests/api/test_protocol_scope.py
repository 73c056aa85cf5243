"""api/protocol.py's own parser callbacks build what uvicorn's build.

The agent's protocol replaces uvicorn's `on_message_begin` and
`on_headers_complete` with leaner ones; ASGI apps and the fast paths read
the scope and the cycle they make. Here the same bytes go through uvicorn's
`HttpToolsProtocol` itself and through the agent's class (the real httptools
parser in both; the transport is a stub that only records, as nothing is
answered), and every request's scope, keep-alive, `Expect: 100-continue`
state, chosen app (uvicorn's 503 stand-in past `limit_concurrency`) and the
pipeline queue must be the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from waypost.api.protocol import LOST, guarded_protocol


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.9", 40001), "sockname": ("127.0.0.1", 8123)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never started here")


def seen(base: type[HttpToolsProtocol], data: bytes, **config: Any) -> list[Any]:
    """What the protocol hands on for each request in `data`: started ones
    and those queued behind them (reading paused), in order."""
    started: list[tuple[RequestResponseCycle, Any]] = []

    class Recording(base):  # type: ignore[misc, valid-type]
        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            started.append((cycle, app))  # never answered: later ones queue

    cfg = Config(app, **config)
    cfg.load()
    state = ServerState()
    loop = asyncio.new_event_loop()  # never run: the protocol only reads its clock
    try:
        protocol = Recording(cfg, state, {"lifespan": "state"}, _loop=loop)
        transport = Transport()
        protocol.connection_made(transport)
        state.connections.add(protocol)
        protocol.data_received(data)
    finally:
        loop.close()
    queued = list(reversed(protocol.pipeline))
    out = []
    for cycle, chosen in started + queued:
        scope = dict(cycle.scope)
        extensions = scope.pop("extensions", None)
        if base is not HttpToolsProtocol:
            assert extensions is not None and extensions[LOST] is protocol._lost
        out.append(
            (
                scope,
                cycle.keep_alive,
                cycle.waiting_for_100_continue,
                chosen is service_unavailable,
                cycle.default_headers,
                cycle.body,
                cycle.more_body,
            )
        )
    out.append((len(started), len(queued), transport.paused))
    return out


REQUESTS = {
    "query": b"GET /v1/health/service/web?passing=1&dc=dc1 HTTP/1.1\r\nHost: a\r\n\r\n",
    "escaped": b"GET /v1/kv/a%2Fb%20c?recurse HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
    "http10": b"GET /v1/agent/self HTTP/1.0\r\n\r\n",
    "http10-keep": b"GET /v1/agent/self HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "close": b"GET /v1/status/leader HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "expect": (
        b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n"
    ),
    "body": b"PUT /v1/kv/k HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "pipelined": (
        b"PUT /v1/kv/a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
        b"GET /v1/kv/a?raw HTTP/1.1\r\nHost: a\r\n\r\n"
        b"DELETE /v1/kv/a HTTP/1.1\r\nHost: a\r\n\r\n"
    ),
    "upgrade": (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
@pytest.mark.parametrize(
    "config",
    [{}, {"root_path": "/base"}, {"limit_concurrency": 1}],
    ids=["plain", "root_path", "over_limit"],
)
def test_scope_and_cycle_match_uvicorns(name: str, config: dict[str, Any]) -> None:
    ours = guarded_protocol(30.0)
    data = REQUESTS[name]
    assert seen(ours, data, ws="none", **config) == seen(
        HttpToolsProtocol, data, ws="none", **config
    )


def test_the_scope_is_fresh_per_request() -> None:
    # Apps may write into a request's scope and state: nothing is shared
    # between requests of one connection.
    ours = guarded_protocol(30.0)
    data = REQUESTS["pipelined"]
    scopes = [entry[0] for entry in seen(ours, data, ws="none")[:-1]]
    assert len(scopes) == 3
    for key in ("asgi", "state", "headers"):
        assert len({id(scope[key]) for scope in scopes}) == 3


def test_a_target_seen_before_gives_the_same_scope() -> None:
    # The protocol keeps each request target's parsed path and query (one
    # table per protocol class): a second request to the same target, on
    # another connection, under another root path, or with targets past the
    # table's length bound, must see what uvicorn would make of it.
    ours = guarded_protocol(30.0)
    long = b"/v1/kv/" + b"x%20" * 200
    requests = {**REQUESTS, "long": b"GET " + long + b"?a=1 HTTP/1.1\r\nHost: a\r\n\r\n"}
    for config in ({}, {"root_path": "/base"}, {}, {"root_path": "/other"}):
        for name in sorted(requests):
            data = requests[name]
            assert seen(ours, data, ws="none", **config) == seen(
                HttpToolsProtocol, data, ws="none", **config
            ), (name, config)


def test_an_invalid_target_is_refused_each_time() -> None:
    # parse_url raises for it: nothing is kept, and the second one is refused too.
    ours = guarded_protocol(30.0)
    data = b"GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n"
    for _ in range(2):
        assert seen(ours, data, ws="none") == seen(HttpToolsProtocol, data, ws="none")
