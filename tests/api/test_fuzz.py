"""A hypothesis fuzz of every HTTP endpoint: never an unexpected 5xx, and a
refused request writes nothing.

The agent's own app (every route set the runtime mounts, ACLs on with default
deny) is driven in process over ASGI, so a thousand requests take seconds.
Its health runner is not started: nothing but the fuzzed requests writes, so
"a 4xx changed the store's index" means a request was half-written.

5xx answers Consul itself gives are allowed: 501 for what waypost does not
build, 500 for Consul's refusals ("No path to datacenter", "invalid
session"), 503 for a store that is unavailable. Anything else, an unexpected
exception above all ("internal error: ..."), fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waypost.agent import AgentConfig
from waypost.agent.config import AclSettings, AclTokens
from waypost.agent.runtime import Agent
from waypost.api.agent import NOT_BUILT
from waypost.api.app import AgentApp
from waypost.catalog.state import State

MGMT = "0f0e0d0c-0b0a-4909-8807-060504030201"
SKIP = {"/v1/agent/monitor", "/v1/agent/leave"}  # a stream that never ends; a shutdown

_NAMES = st.sampled_from(["web", "web-1", "fuzz", "fuzz:1", "n1", "a/b", "ü", "", "%2F", "x" * 300])
_VALUES = st.one_of(
    st.sampled_from(["", "0", "1", "true", "false", "10ms", "1ms", "²", "\u0661", "-1", "1" * 30]),
    st.text(max_size=12),
)
_QUERY_KEYS = st.sampled_from(
    ["index", "wait", "passing", "tag", "token", "recurse", "keys", "cas", "flags", "dc",
     "stale", "consistent", "enable", "reason", "note", "replace-existing-checks", "source",
     "destination", "by", "name", "separator", "acquire", "release", "raw", "policy", "format"]
)  # fmt: skip
_FIELDS = st.sampled_from(
    ["Name", "ID", "Service", "Node", "Address", "Port", "Tags", "Meta", "Check", "Checks",
     "TTL", "HTTP", "TCP", "Interval", "Timeout", "Method", "Header", "ServiceID", "CheckID",
     "Status", "Output", "Rules", "Policies", "SecretID", "AccessorID", "Datacenter", "Verb",
     "Key", "Value", "KV", "Action", "SourceName", "DestinationName", "Target", "Weights",
     "ExpirationTTL", "ServiceIdentities", "TaggedAddresses", "SkipNodeUpdate", "LockDelay"]
)  # fmt: skip
_JSON = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=20), _VALUES
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_FIELDS, st.text(max_size=6)), inner, max_size=6),
    ),
    max_leaves=20,
)
_BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([40, 900, 1100, 5000, 100_000]).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([40, 900, 1100, 5000]).map(
        lambda n: b'{"Name": "x", "Checks": ' + b"[" * n + b"]" * n + b"}"
    ),
)


class Fuzzed:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        acl = AclSettings(
            enabled=True, default_policy="deny", tokens=AclTokens(initial_management=MGMT)
        )
        config = AgentConfig(
            dev=True, node="fuzz-node", http="127.0.0.1:0", dns="off", grpc="off", acl=acl
        )
        self.agent = Agent(config)
        self.loop.run_until_complete(self._open())
        self.app: AgentApp = self.agent._app()
        routes = {(m, p) for m, p, _ in self.app.router.routes() if p not in SKIP and m != "HEAD"}
        # what waypost does not build answers 501 the same way: a few of them suffice
        self.routes = (
            sorted(r for r in routes if r[1] not in NOT_BUILT)
            + sorted(r for r in routes if r[1] in NOT_BUILT)[:5]
        )

    async def _open(self) -> None:
        await self.agent.catalog.open()
        await self.agent.security.start()
        await self.agent.catalog.write(
            self.agent.local._take_over
        )  # its node, no anti-entropy task
        if self.agent.leaves is not None:
            await self.agent.leaves.start()  # the mesh's CA root (one write)

    def call(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, bytes]:
        return self.loop.run_until_complete(
            asyncio.wait_for(self._call(method, path, query, headers, body), 10)
        )

    async def _call(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "query_string": query,
            "headers": headers,
        }
        await self.app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, b"".join(
            m.get("body", b"") for m in sent if m["type"] == "http.response.body"
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.agent.catalog.close())
        self.loop.close()


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    f = Fuzzed()
    yield f
    f.close()


def consistent(state: State) -> None:
    """What no sequence of requests may leave behind: instances on missing
    nodes, checks of missing instances."""
    for node, _ in state.services:
        assert node in state.nodes, f"an instance on a missing node {node!r}"
    for (node, check_id), check in state.checks.items():
        assert node in state.nodes, f"check {check_id!r} on a missing node {node!r}"
        if check.service_id:
            assert (node, check.service_id) in state.services, (
                f"check {check_id!r} of a missing instance"
            )


@st.composite
def requests(
    draw: st.DrawFn, route: tuple[str, str]
) -> tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes]:
    method, path = route
    if path.endswith("/"):
        path += draw(_NAMES)
    pairs = draw(st.lists(st.tuples(_QUERY_KEYS, _VALUES), max_size=4))
    if any(k == "index" for k, _ in pairs):  # a blocking query must not wait its default 5 minutes
        pairs = [(k, v) for k, v in pairs if k != "wait"] + [("wait", "1ms")]
    query = "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")
    management = [(b"x-consul-token", MGMT.encode())]
    headers = draw(st.sampled_from([management] * 6 + [[], [(b"authorization", b"Bearer nope")]]))
    return method, path, query, headers, draw(_BODIES)


def _routes() -> list[tuple[str, str]]:
    f = Fuzzed()
    try:
        return f.routes
    finally:
        f.close()


ROUTES = _routes()
EXAMPLES = int(os.environ.get("WAYPOST_FUZZ_EXAMPLES", "30"))  # per endpoint


def test_every_endpoint_is_fuzzed() -> None:
    assert len(ROUTES) > 50


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_endpoint_answers_an_unexpected_5xx_or_half_writes(
    fuzzed: Fuzzed, route: tuple[str, str]
) -> None:
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(requests(route))
    def one(request: tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes]) -> None:
        method, path, query, headers, body = request
        before = fuzzed.agent.catalog.state.index
        status, answer = fuzzed.call(method, path, query, headers, body)
        assert not answer.startswith(b"internal error"), (request, answer[:300])
        assert status < 500 or status in (500, 501, 503), (request, status, answer[:300])
        if status >= 400:
            assert fuzzed.agent.catalog.state.index == before, (request, status, answer[:300])
        consistent(fuzzed.agent.catalog.state)

    one()
