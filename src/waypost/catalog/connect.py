"""The mesh's records in the catalog: the CA's roots and the intentions.

Both are written through the one write path (`Catalog.write(plan, ...)`), so
on etcd every agent shares one CA and one set of intentions, and a change
reaches every agent's xDS server through the same `apply` as any other.

Intentions follow Consul's rules: a source and a destination, each a service
name or the wildcard `*`; the most precise match decides (an exact name beats
`*`, and the destination counts before the source), and with none the
default policy applies: the ACL default policy, as Consul's (allow with ACLs
off or `--acl-default-policy allow`, deny with `--acl-default-policy deny`).
The agent passes it in (`default_allow`); nothing here reads the settings.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from .._exceptions import NotFoundError, ValidationError
from . import codec
from .model import CARoot, Intention
from .state import State
from .txn import Txn

WILDCARD = "*"


class IntentionBody(msgspec.Struct):
    """The body of `PUT /v1/connect/intentions/exact` (or the legacy create)."""

    action: str = ""
    description: str = ""
    meta: dict[str, str] = {}
    sourcename: str = ""
    destinationname: str = ""
    sourcetype: str = "consul"
    permissions: list[Any] = []


class Decision(msgspec.Struct, frozen=True):
    allowed: bool
    reason: str
    intention: Intention | None = None


# -- the CA's roots -----------------------------------------------------------


def init_ca(txn: Txn, root: CARoot) -> CARoot:
    """Store `root` unless the CA has an active root already (another agent
    may have made one first: the range guard makes this plan re-run then)."""
    active = next((r for r in txn.roots() if r.active), None)
    if active is not None:
        return active
    txn.put(root)
    return root


# -- intentions: writes --------------------------------------------------------


def validate_intention(source: str, destination: str, body: IntentionBody) -> None:
    """Raises ValidationError for a body Consul would refuse (or waypost cannot enforce)."""
    if not source or not destination:
        raise ValidationError("source and destination are required")
    for what, name in (("source", source), ("destination", destination)):
        if "*" in name and name != WILDCARD:
            raise ValidationError(f'{what} "{name}": the wildcard is "*" alone')
    if body.permissions:
        raise ValidationError(
            "Permissions (L7 intentions) are not supported by waypost yet; use Action"
        )
    if body.action not in ("allow", "deny"):
        raise ValidationError(f'Action must be "allow" or "deny", got "{body.action}"')
    if body.sourcetype not in ("", "consul"):
        raise ValidationError(f'SourceType "{body.sourcetype}" is not supported (use consul)')


def put_intention(
    txn: Txn, source: str, destination: str, body: IntentionBody, now: str
) -> Intention:
    """Create or replace the intention from `source` to `destination`."""
    validate_intention(source, destination, body)
    old = txn.intention(source, destination)
    intention = Intention(
        id=old.id if old else str(uuid.uuid4()),
        source=source,
        destination=destination,
        action=body.action,  # type: ignore[arg-type]
        description=body.description,
        meta=body.meta,
        created_at=old.created_at if old else now,
        updated_at=now,
    )
    txn.put(intention)
    return intention


def delete_intention(txn: Txn, source: str, destination: str) -> None:
    """Remove an intention. Raises NotFoundError."""
    if txn.intention(source, destination) is None:
        raise NotFoundError(f'no intention from "{source}" to "{destination}"')
    txn.delete(codec.intention_key(source, destination))


def delete_intention_by_id(txn: Txn, intention_id: str) -> None:
    found = by_id(txn.state, intention_id)
    if found is None:
        raise NotFoundError(f'Intention with ID "{intention_id}" not found')
    delete_intention(txn, found.source, found.destination)


# -- intentions: reads ---------------------------------------------------------


def precedence(intention: Intention) -> int:
    """Consul's precedence without namespaces: exact/exact 9, */exact 8,
    exact/* 6, */* 5 (the destination counts first)."""
    exact_dest = intention.destination != WILDCARD
    exact_source = intention.source != WILDCARD
    return {(True, True): 9, (True, False): 8, (False, True): 6}.get((exact_dest, exact_source), 5)


def ordered(intentions: list[Intention]) -> list[Intention]:
    """Most precise first, then by source and destination (a stable listing)."""
    return sorted(intentions, key=lambda i: (-precedence(i), i.source, i.destination))


def matches(state: State, by: str, name: str) -> list[Intention]:
    """`/v1/connect/intentions/match`: the intentions that apply to `name` as
    a source (`by="source"`) or a destination, in precedence order."""
    if by not in ("source", "destination"):
        raise ValidationError('by must be "source" or "destination"')
    found = [
        i
        for i in state.all_intentions()
        if (i.source if by == "source" else i.destination) in (name, WILDCARD)
    ]
    return ordered(found)


def decide(state: State, source: str, destination: str, default_allow: bool) -> Decision:
    """Whether `source` may call `destination`, and why (Consul's authorize).
    With no intention for the pair, `default_allow` (the ACL default policy)
    decides, and the reason says so."""
    candidates = [i for i in matches(state, "destination", destination) if _src_ok(i, source)]
    if not candidates:
        verdict = "allowed" if default_allow else "denied"
        return Decision(default_allow, f"Default behavior configured by ACLs: {verdict}")
    best = candidates[0]
    verb = "allowed" if best.action == "allow" else "denied"
    return Decision(
        best.action == "allow",
        f'Matched intention {best.source} => {best.destination} ({best.id}): "{source}" {verb}',
        best,
    )


def _src_ok(intention: Intention, source: str) -> bool:
    return intention.source in (source, WILDCARD)


def by_id(state: State, intention_id: str) -> Intention | None:
    return next((i for i in state.all_intentions() if i.id == intention_id), None)
