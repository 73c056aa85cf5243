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
from waypost.catalog.acl import AclTable
from waypost.catalog.authz import Authorizer, Resolver
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
    guard = access.Guard(Resolver(table, "dc1", default_allow=True), lambda: "", State(), "n1")
    with pytest.raises(PermissionDenied, match="declares no ACL rule"):
        guard.enforce(request("/v1/new/thing"), "", None)  # default allow does not open it
    assert guard.enforce(request("/v1/status/leader"), "", access.OPEN) is None


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
