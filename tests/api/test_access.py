"""The ACL declarations of routes, and the one place that enforces them (in process)."""

from __future__ import annotations

from typing import Any

import pytest

from waypost._exceptions import PermissionDenied
from waypost.agent import AgentConfig
from waypost.agent.runtime import Agent
from waypost.api import access
from waypost.api.agent import NOT_BUILT
from waypost.api.http import Request, Router
from waypost.catalog import aclrules
from waypost.catalog.acl import ANONYMOUS_ACCESSOR, AclTable
from waypost.catalog.aclrules import READ
from waypost.catalog.authz import Authorizer, Resolver
from waypost.catalog.codec import put_acl
from waypost.catalog.model import Policy, Token
from waypost.catalog.state import State


def request(
    path: str = "/x", query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"method": "GET", "path": path, "query_string": query, "headers": headers or []}
    return Request(scope, receive)


def test_every_api_route_declares_what_it_needs() -> None:
    """A route added without a declaration is closed to all but management
    tokens; every endpoint built so far must say what it needs instead."""
    agent = Agent(AgentConfig(dev=True, node="n1"))
    routes = agent._app().router.routes()
    undeclared = sorted({p for _, p, a in routes if a is None and p not in NOT_BUILT})
    assert undeclared == []
    assert len(routes) > 60


@pytest.mark.parametrize(
    ("query", "headers", "expected"),
    [
        (b"token=q", [(b"x-consul-token", b"h"), (b"authorization", b"Bearer b")], "q"),
        (b"", [(b"authorization", b"Bearer b"), (b"x-consul-token", b"h")], "h"),
        (b"", [(b"authorization", b"bearer b")], "b"),
        (b"", [(b"authorization", b"Basic Zm9v")], ""),
        (b"", [], ""),
    ],
)
def test_token_sources_in_consuls_order(
    query: bytes, headers: list[tuple[bytes, bytes]], expected: str
) -> None:
    assert access.token_of(request(query=query, headers=headers)) == expected


def test_an_undeclared_route_is_for_management_tokens_only() -> None:
    table = AclTable()
    guard = access.Guard(Resolver(table, "dc1", default_allow=True), "", State(), "n1")
    with pytest.raises(PermissionDenied, match="declares no ACL rule"):
        guard.enforce(request("/v1/new/thing"), "", None)  # default allow does not open it
    assert guard.enforce(request("/v1/status/leader"), "", access.OPEN) is None


def test_the_fast_path_may_serve_a_filtered_read_as_the_tokens_own() -> None:
    """`Guard.admit_read`: what a protocol-level fast path asks before it
    answers a read from the encoded-answer cache."""
    policy = Policy(id="p1", name="r", rules='service_prefix "" { policy = "read" }')
    t = AclTable()
    for n, record in enumerate((policy, Token(accessor_id="a1", secret_id="s1", policies=("p1",))), 1):
        t.apply(n, put_acl(record), set())
    guard = access.Guard(Resolver(t, "dc1", default_allow=False), "", State(), "n1")
    read = access.filtered(access.keys("service"))
    req = request("/v1/catalog/services", headers=[(b"x-consul-token", b"s1")])
    assert guard.admit_read(req, read)
    assert (req.authz.accessor, req.access) == ("a1", read)  # its answer is keyed as a1's
    anonymous = request("/v1/catalog/services")
    assert guard.admit_read(anonymous, read) and anonymous.authz.accessor == ANONYMOUS_ACCESSOR
    unknown = request("/v1/catalog/services", headers=[(b"x-consul-token", b"nope")])
    assert not guard.admit_read(unknown, read) and unknown.authz is None  # the normal path: 403
    needs = access.filtered(access.keys("service"), lambda ctx: (("agent", "n1", READ),))
    assert not guard.admit_read(request(headers=[(b"x-consul-token", b"s1")]), needs)
    assert not guard.admit_read(request(headers=[(b"x-consul-token", b"s1")]), None)


def test_filters_keep_only_what_may_be_read() -> None:
    authz = Authorizer("a", aclrules.parse('service_prefix "pub" { policy = "read" }'), False)
    kept, dropped = access.keys("service")(authz, {"pub-1": [], "priv": []})
    assert (kept, dropped) == ({"pub-1": []}, True)
    kept, dropped = access.items(lambda s: [("service", s)])(authz, ["pub-2"])
    assert (kept, dropped) == (["pub-2"], False)


def test_router_keeps_each_methods_declaration() -> None:
    r = Router()

    async def handler(req: Request, rest: str) -> Any:
        return None

    r.add("GET", "/v1/thing/", handler, access.OPEN)
    r.add("PUT", "/v1/thing/", handler, access.need("key", access.WRITE))
    assert r.route("GET", "/v1/thing/x")[2] is access.OPEN
    assert r.route("PUT", "/v1/thing/x")[2] is not access.OPEN
