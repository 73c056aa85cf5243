"""What each route needs under ACLs, declared where it is registered, and
the one place that enforces it.

Every route is added with an `Access` (`router.add("PUT", path, handler,
need("service", WRITE))`): the permissions a request needs before its
handler runs, and for list reads a filter that drops what the token may not
read. `Guard.enforce` (called by the app for every request when ACLs are on)
resolves the token, evaluates the declaration, and either lets the request
through with `req.authz` set, or raises PermissionDenied naming the missing
permission (403, as Consul words it). Handlers never check ACLs themselves;
`ConsulApi._read` applies a route's filter to what it produced and sets
`X-Consul-Results-Filtered-By-ACLs`.

A declaration reads names from the path (`PATH`), the query, the body
(decoded once, shared with the handler: `body(ServiceRegistration, ...)`)
or the catalog (a service ID's service name: `custom(...)`). A route added
without one is open to management tokens only: a new endpoint is closed
until someone says what it needs. docs/security.md shows how to declare one.

The token comes from `?token=`, then `X-Consul-Token`, then
`Authorization: Bearer` (Consul's order); none means the agent's default
token, and without one the anonymous token.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from .._exceptions import PermissionDenied
from ..catalog.aclrules import LIST, READ, WRITE
from ..catalog.authz import Authorizer, Perm, Resolver
from ..catalog.state import State
from . import decode
from .http import Request

__all__ = ["LIST", "READ", "WRITE", "Access", "Guard", "Perm"]

T = TypeVar("T")
Filter = Callable[[Authorizer, Any], tuple[Any, bool]]  # (answer, whether anything went)


class Ctx:
    """What a declaration may read to name the permissions a request needs."""

    __slots__ = ("node", "req", "rest", "state")

    def __init__(self, req: Request, rest: str, state: State, node: str) -> None:
        self.req = req
        self.rest = rest  # the path after the route's prefix: an ID or a name
        self.state = state
        self.node = node  # this agent's node name

    async def body(self, kind: type[T]) -> T:
        return await decode.body_of(self.req, kind)


NeedsFn = Callable[[Ctx], Awaitable[Iterable[Perm]] | Iterable[Perm]]


class Access:
    """A route's declaration: what it needs, and how its answer is filtered.

    Args:
        needs: The permissions a request needs (None: none).
        filter: For reads, what of the answer the token may see.
        public: Reachable without any token check at all (the UI's static page).
    """

    __slots__ = ("filter", "needs", "public")

    def __init__(
        self, needs: NeedsFn | None = None, filter: Filter | None = None, public: bool = False
    ) -> None:
        self.needs = needs
        self.filter = filter
        self.public = public


PATH: Final = object()  # "the name is the rest of the path"

OPEN: Final = Access()  # any token (or none) that resolves: status, datacenters
PUBLIC: Final = Access(public=True)  # not even a token check: static files


def need(resource: str, level: int, name: object = PATH) -> Access:
    """One permission, on the path's name, a fixed name, or `name(ctx)`."""

    def needs(ctx: Ctx) -> Iterable[Perm]:
        if name is PATH:
            return ((resource, ctx.rest, level),)
        if callable(name):
            return ((resource, name(ctx), level),)
        return ((resource, str(name), level),)

    return Access(needs)


def agent(level: int) -> Access:
    """`agent:<level>` on this agent's node (agent:read for /v1/agent/self)."""
    return Access(lambda ctx: (("agent", ctx.node, level),))


def body(kind: type[T], needs: Callable[[Ctx, T], Iterable[Perm]]) -> Access:
    """Permissions named by the request's body, decoded as `kind`."""

    async def from_body(ctx: Ctx) -> Iterable[Perm]:
        return needs(ctx, await ctx.body(kind))

    return Access(from_body)


def custom(needs: NeedsFn) -> Access:
    return Access(needs)


def filtered(filter: Filter, needs: NeedsFn | None = None) -> Access:
    return Access(needs, filter)


# -- filters of list answers (what Consul's ACL filter does per endpoint) ------


def items(names: Callable[[Any], Iterable[tuple[str, str]]]) -> Filter:
    """A list answer: keep the items whose every (resource, name) may be read."""

    def apply(authz: Authorizer, answer: Any) -> tuple[Any, bool]:
        kept = [i for i in answer if all(authz.allowed(r, n, READ) for r, n in names(i))]
        return kept, len(kept) != len(answer)

    return apply


def keys(resource: str) -> Filter:
    """A map keyed by names (`/v1/catalog/services`): keep the readable ones."""

    def apply(authz: Authorizer, answer: Any) -> tuple[Any, bool]:
        kept = {k: v for k, v in answer.items() if authz.allowed(resource, k, READ)}
        return kept, len(kept) != len(answer)

    return apply


def values(names: Callable[[Any], Iterable[tuple[str, str]]]) -> Filter:
    """A map keyed by IDs (`/v1/agent/services`): keep the readable values."""

    def apply(authz: Authorizer, answer: Any) -> tuple[Any, bool]:
        kept = {
            k: v for k, v in answer.items() if all(authz.allowed(r, n, READ) for r, n in names(v))
        }
        return kept, len(kept) != len(answer)

    return apply


def apply_filter(req: Request, answer: Any) -> tuple[Any, bool]:
    """The answer less what the request's token may not read, by its route's
    declared filter; and whether anything was left out. For handlers that
    answer outside `ConsulApi._read` (KV, sessions): they pass their answer
    through here and add `filtered_header` when it says so."""
    authz, declared = req.authz, req.access
    if authz is None or authz.manage or declared is None or declared.filter is None:
        return answer, False
    result: tuple[Any, bool] = declared.filter(authz, answer)
    return result


FILTERED_HEADER: Final = (b"x-consul-results-filtered-by-acls", b"true")


def check_names(check: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What reading one encoded check needs: its service's, or its node's."""
    if check.get("ServiceName"):
        return (("service", check["ServiceName"]),)
    return (("node", check["Node"]),)


# -- the one place that enforces -------------------------------------------------


def token_of(req: Request) -> str:
    """The token a request carries: `?token=`, `X-Consul-Token`, then a Bearer token."""
    return token_in(req.query, req.headers)


def token_in(query: dict[str, list[str]], headers: Iterable[tuple[bytes, bytes]]) -> str:
    """`token_of` for a parsed query string and raw headers."""
    if query:
        given = query.get("token")
        if given and given[0]:
            return given[0]
    bearer = b""
    for name, value in headers:
        if name == b"x-consul-token" and value:
            return value.strip().decode("latin-1")
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip()
    return bearer.decode("latin-1")


class Guard:
    """Resolves each request's token and enforces its route's declaration.

    Args:
        resolver: Secrets to authorizers (catalog/authz.py).
        default_token: Asked for when a request carries none ("" means
            anonymous): `PUT /v1/agent/token/default` changes it at run time.
        state: The catalog state, for declarations that look names up.
        node: This agent's node name.
    """

    def __init__(
        self, resolver: Resolver, default_token: Callable[[], str], state: State, node: str
    ) -> None:
        self.resolver = resolver
        self.default_token = default_token
        self.state = state
        self.node = node

    def authorize(self, req: Request) -> Authorizer:
        """The request's authorizer (AclNotFound for an unknown or expired token)."""
        return self.resolver.resolve(token_of(req) or self.default_token())

    def enforce(self, req: Request, rest: str, access: Access | None) -> Awaitable[None] | None:
        """Let the request through, with `req.authz` and `req.access` set, or raise.

        Synchronous for every declaration but those that read the body: their
        check is returned, to be awaited (a read costs no coroutine here).

        Raises:
            AclNotFound: the token is unknown or expired.
            PermissionDenied: the token lacks a permission the route declares,
                or the route declares nothing and the token is not a management one.
        """
        if access is not None and access.public:
            return None
        authz = self.authorize(req)
        req.authz = authz
        req.access = access
        if access is None:
            if not authz.manage:
                raise PermissionDenied(
                    f"Permission denied: {req.path} declares no ACL rule yet, so only a "
                    "management token may call it (see docs/security.md)"
                )
            return None
        if access.needs is None:
            return None
        perms = access.needs(Ctx(req, rest, self.state, self.node))
        if inspect.isawaitable(perms):
            return _require_later(authz, perms)
        authz.require_all(perms)
        return None


async def _require_later(authz: Authorizer, perms: Awaitable[Iterable[Perm]]) -> None:
    authz.require_all(await perms)


# -- names looked up in the catalog (an ID in the path names a service or check)


def own_service(level: int) -> Access:
    """`service:<level>` on the service whose ID on this agent's node is the
    path's rest; an unknown ID needs nothing here (the handler answers 404)."""

    def needs(ctx: Ctx) -> Iterable[Perm]:
        service = ctx.state.instance(ctx.node, ctx.rest)
        return (("service", service.name, level),) if service is not None else ()

    return Access(needs)


def own_check(level: int) -> Access:
    """What changing a check of this agent needs: `service:write` on its
    service, or `node:write` on this node for a node-level check."""

    def needs(ctx: Ctx) -> Iterable[Perm]:
        return check_needs(ctx.state, ctx.node, ctx.rest, level)

    return Access(needs)


def check_needs(state: State, node: str, check_id: str, level: int) -> tuple[Perm, ...]:
    check = state.check(node, check_id)
    if check is None:
        return ()
    if check.service_id:
        return (("service", check.service_name, level),)
    return (("node", node, level),)


def service_needs(state: State, node: str, service_id: str, level: int) -> tuple[Perm, ...]:
    service = state.instance(node, service_id)
    return (("service", service.name, level),) if service is not None else ()
