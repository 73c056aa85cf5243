"""Who the agent's own writes are: Consul's agent token.

In Consul an agent keeps its node true (anti-entropy) and deregisters the
services it reaps with `acl.tokens.agent`; without one it uses the default
token, and without that the anonymous token. The node record and serfHealth
are also registered by Consul's leader for every live member, whatever the
agent's token, so waypost (agent and server in one) always keeps those and
only says when the agent token lacks node:write (agent/local.py). Reaping
runs through `authorized`, a plan that runs another plan and, if it staged
anything, requires the identity's permissions before anything is committed.
A refusal raises AccessDenied and writes nothing; the agent logs it
(`blocked_message`) and keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .._exceptions import AccessDenied, AclNotFound
from .._logfmt import quote
from .acl import ANONYMOUS_ACCESSOR
from .aclrules import WRITE
from .authz import Perm, Resolver
from .txn import Txn

T = TypeVar("T")


class Identity:
    """A token the agent writes as, asked for and resolved again at every
    write (an ACL change, the token being created after the agent started, or
    a new one set through the API, applies at the next anti-entropy pass).

    Args:
        resolver: Secrets to authorizers.
        token: (secret, where it came from, for the log: "acl.tokens.agent"),
            as it is now: the agent token, else the default token ("" is anonymous).
    """

    def __init__(self, resolver: Resolver, token: Callable[[], tuple[str, str]]) -> None:
        self.resolver = resolver
        self.token = token

    @property
    def secret(self) -> str:
        return self.token()[0]

    @property
    def source(self) -> str:
        return self.token()[1]

    def require(self, perms: Iterable[Perm]) -> None:
        """Raises AclNotFound (an unknown token) or PermissionDenied."""
        self.resolver.resolve(self.secret).require_all(perms)

    def accessor(self) -> str:
        """The token's AccessorID as Consul logs it ("anonymous token" for it)."""
        try:
            accessor = self.resolver.resolve(self.secret).accessor
        except AclNotFound:
            return "unknown token"
        return "anonymous token" if accessor == ANONYMOUS_ACCESSOR else accessor


def node_write(node: str) -> tuple[Perm, ...]:
    """What the agent's writes of its own node need (Consul's node info sync;
    `node:write` also lets it deregister the services on its node)."""
    return (("node", node, WRITE),)


def authorized(
    txn: Txn,
    identity: Identity | None,
    perms: tuple[Perm, ...],
    plan: Callable[..., T],
    *args: Any,
    **kw: Any,
) -> T:
    """Run `plan(txn, ...)`; if it staged anything, require `perms` of the
    identity (None: ACLs are off) before the commit. Use through
    `Catalog.write(authorized, identity, perms, plan, ...)`.

    Raises:
        AccessDenied: the identity may not; nothing is committed.
    """
    result = plan(txn, *args, **kw)
    if identity is not None and txn.ops:
        identity.require(perms)
    return result


def blocked_message(what: str, node: str, identity: Identity, exc: AccessDenied) -> str:
    """Consul's "Node info update blocked by ACLs" line, with what to do about it."""
    reason = (
        f"the token in {identity.source} does not exist (create it with that SecretID)"
        if isinstance(exc, AclNotFound)
        else str(exc)
    )
    return (
        f"{what} blocked by ACLs: node={node} accessorID={quote(identity.accessor())} "
        f"token={quote(identity.source)} reason={quote(reason)}: give the agent a token "
        f"(acl.tokens.agent, WAYPOST_ACL_TOKEN_AGENT or agent_file) with node:write on "
        f"{quote(node)}, e.g. "
        f'a node identity {{"NodeName": "{node}", "Datacenter": "{identity.resolver.datacenter}"}}'
    )
