"""Every change to ACL state, as a plan over a Txn (see writes.py and txn.py).

ACL writes are rare and small, and their rules span records (a name is
unique among policies, a secret among tokens, bootstrap happens once), so
every plan here guards the whole `a/` range: if any ACL record changed
between the read and the commit, the commit conflicts and the plan runs
again on the newer state. Two agents bootstrapping the same etcd cluster at
once therefore get one success and one "no longer allowed".

IDs and secrets are drawn by the caller and passed in, so a plan that runs
twice decides the same way.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

import msgspec

from .. import _duration
from .._exceptions import NotFoundError, PermissionDenied, ValidationError
from ..storage import Condition, prefix_end
from . import aclrules
from .acl import (
    ANONYMOUS_ACCESSOR,
    ANONYMOUS_SECRET,
    MANAGEMENT_POLICY_ID,
    MANAGEMENT_POLICY_NAME,
    MANAGEMENT_RULES,
    AclTable,
)
from .codec import ACL_PREFIX, policy_key, role_key, token_key
from .codec import put_acl as encode
from .model import Bootstrap, NodeIdentity, Policy, Role, ServiceIdentity, Token
from .txn import Txn

_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)
_SERVICE_NAME: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,254}[a-z0-9])?", re.ASCII)
MIN_TTL: Final = 60.0
MAX_TTL: Final = 24 * 3600.0


# -- request bodies (keys folded by api/decode.py) -----------------------------


class Link(msgspec.Struct):
    id: str = ""
    name: str = ""


class ServiceIdentityBody(msgspec.Struct):
    servicename: str = ""
    datacenters: list[str] = []


class NodeIdentityBody(msgspec.Struct):
    nodename: str = ""
    datacenter: str = ""


class PolicyBody(msgspec.Struct):
    id: str = ""
    name: str = ""
    description: str = ""
    rules: str = ""
    datacenters: list[str] = []


class RoleBody(msgspec.Struct):
    id: str = ""
    name: str = ""
    description: str = ""
    policies: list[Link] = []
    serviceidentities: list[ServiceIdentityBody] = []
    nodeidentities: list[NodeIdentityBody] = []


class TokenBody(msgspec.Struct):
    accessorid: str = ""
    secretid: str = ""
    description: str = ""
    policies: list[Link] = []
    roles: list[Link] = []
    serviceidentities: list[ServiceIdentityBody] = []
    nodeidentities: list[NodeIdentityBody] = []
    local: bool = False
    expirationtime: str = ""
    expirationttl: str | int = ""


# -- plans ------------------------------------------------------------------------


def _table(txn: Txn) -> AclTable:
    """The ACL records, with the whole `a/` range guarded (see the module doc)."""
    key = f"range:{ACL_PREFIX}"
    if key not in txn.conditions:
        txn.conditions[key] = Condition(ACL_PREFIX, txn.state.index, prefix_end(ACL_PREFIX))
    return txn.state.acl


def ensure_builtins(txn: Txn, management_secret: str, accessor: str, now: float) -> None:
    """What an agent with ACLs on needs in the store: the global-management
    policy, the anonymous token, and the configured initial management token
    (which counts as the bootstrap, as in Consul)."""
    table = _table(txn)
    if MANAGEMENT_POLICY_ID not in table.policies:
        txn.stage(
            encode(
                Policy(
                    id=MANAGEMENT_POLICY_ID,
                    name=MANAGEMENT_POLICY_NAME,
                    description="Builtin Policy that grants unlimited access",
                    rules=MANAGEMENT_RULES,
                )
            )
        )
    if ANONYMOUS_ACCESSOR not in table.tokens:
        anonymous = Token(
            accessor_id=ANONYMOUS_ACCESSOR,
            secret_id=ANONYMOUS_SECRET,
            description="Anonymous Token",
            create_time=now,
        )
        txn.stage(encode(anonymous))
    if management_secret and table.token_by_secret(management_secret) is None:
        token = Token(
            accessor_id=accessor,
            secret_id=management_secret,
            description="Initial Management Token",
            policies=(MANAGEMENT_POLICY_ID,),
            create_time=now,
        )
        txn.stage(encode(token))
        if table.bootstrap is None:
            txn.stage(encode(Bootstrap(accessor_id=accessor)))


def bootstrap(txn: Txn, accessor: str, secret: str, now: float) -> Token:
    """`PUT /v1/acl/bootstrap`: the first management token, once.

    Raises:
        PermissionDenied: the ACL system was bootstrapped already.
    """
    table = _table(txn)
    if table.bootstrap is not None:
        raise PermissionDenied(
            "Permission denied: ACL bootstrap no longer allowed "
            f"(reset index: {table.bootstrap.modify_index})"
        )
    token = Token(
        accessor_id=accessor,
        secret_id=secret,
        description="Bootstrap Token (Global Management)",
        policies=(MANAGEMENT_POLICY_ID,),
        create_time=now,
    )
    txn.stage(encode(token))
    txn.stage(encode(Bootstrap(accessor_id=accessor)))
    return token


def set_policy(txn: Txn, body: PolicyBody, policy_id: str, create: bool) -> Policy:
    """Create (`create`, with a fresh `policy_id`) or update a policy."""
    table = _table(txn)
    old = None if create else table.policies.get(policy_id)
    if not create and old is None:
        raise NotFoundError(f'Cannot find policy "{policy_id}"')
    _check_name(body.name, "policy")
    owner = table.policy_names.get(body.name)
    if owner is not None and owner != policy_id:
        raise ValidationError(f'Invalid Policy: A Policy with Name "{body.name}" already exists')
    if policy_id == MANAGEMENT_POLICY_ID and old is not None and body.rules != old.rules:
        raise ValidationError(
            "Changing the Rules for the builtin global-management policy is not permitted"
        )
    aclrules.parse(body.rules)  # raises with the mistake's place
    policy = Policy(
        id=policy_id,
        name=body.name,
        rules=body.rules,
        description=body.description,
        datacenters=tuple(body.datacenters),
    )
    txn.stage(encode(policy))
    return policy


def delete_policy(txn: Txn, policy_id: str) -> None:
    table = _table(txn)
    if policy_id == MANAGEMENT_POLICY_ID:
        raise ValidationError(
            "Delete operation not permitted on the builtin global-management policy"
        )
    if policy_id in table.policies:
        txn.delete(policy_key(policy_id))


def set_role(txn: Txn, body: RoleBody, role_id: str, create: bool) -> Role:
    table = _table(txn)
    if not create and role_id not in table.roles:
        raise NotFoundError(f'Cannot find role "{role_id}"')
    _check_name(body.name, "role")
    owner = table.role_names.get(body.name)
    if owner is not None and owner != role_id:
        raise ValidationError(f'Invalid Role: A Role with Name "{body.name}" already exists')
    role = Role(
        id=role_id,
        name=body.name,
        description=body.description,
        policies=_policy_ids(table, body.policies),
        service_identities=_service_identities(body.serviceidentities),
        node_identities=_node_identities(body.nodeidentities),
    )
    txn.stage(encode(role))
    return role


def delete_role(txn: Txn, role_id: str) -> None:
    if role_id in _table(txn).roles:
        txn.delete(role_key(role_id))


def set_token(
    txn: Txn, body: TokenBody, accessor: str, secret: str, create: bool, now: float
) -> Token:
    """Create a token (with the accessor and secret given, or drawn by the
    caller) or update one (its secret and expiry cannot change)."""
    table = _table(txn)
    old = table.tokens.get(accessor)
    if create and old is not None:
        raise ValidationError(f'Invalid Token: AccessorID "{accessor}" is already in use')
    if not create and old is None:
        raise NotFoundError(f'Cannot find token "{accessor}"')
    if create and table.token_by_secret(secret) is not None:
        raise ValidationError("Invalid Token: SecretID is already in use")
    if old is not None and body.secretid and body.secretid != old.secret_id:
        raise ValidationError("Changing a token's SecretID is not permitted")
    token = Token(
        accessor_id=accessor,
        secret_id=old.secret_id if old is not None else secret,
        description=body.description,
        policies=_policy_ids(table, body.policies),
        roles=_role_ids(table, body.roles),
        service_identities=_service_identities(body.serviceidentities),
        node_identities=_node_identities(body.nodeidentities),
        local=body.local,
        create_time=old.create_time if old is not None else now,
        expiration_time=old.expiration_time if old is not None else _expiry(body, now),
    )
    txn.stage(encode(token))
    return token


def delete_token(txn: Txn, accessor: str) -> None:
    table = _table(txn)
    if accessor == ANONYMOUS_ACCESSOR:
        raise ValidationError("Delete operation not permitted on the anonymous token")
    if accessor in table.tokens:
        txn.delete(token_key(accessor))


# -- helpers -----------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    if not name:
        raise ValidationError(f"Invalid {what.title()}: no Name is set")
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f'Invalid {what.title()}: invalid Name "{name}": use 1 to 128 letters, digits, - and _'
        )


def _policy_ids(table: AclTable, links: list[Link]) -> tuple[str, ...]:
    ids: list[str] = []
    for link in links:
        found = link.id or table.policy_names.get(link.name, "")
        if not found or found not in table.policies:
            raise ValidationError(f'Cannot find policy "{link.id or link.name}"')
        if found not in ids:
            ids.append(found)
    return tuple(ids)


def _role_ids(table: AclTable, links: list[Link]) -> tuple[str, ...]:
    ids: list[str] = []
    for link in links:
        found = link.id or table.role_names.get(link.name, "")
        if not found or found not in table.roles:
            raise ValidationError(f'Cannot find role "{link.id or link.name}"')
        if found not in ids:
            ids.append(found)
    return tuple(ids)


def _service_identities(bodies: list[ServiceIdentityBody]) -> tuple[ServiceIdentity, ...]:
    for body in bodies:
        if not _SERVICE_NAME.fullmatch(body.servicename):
            raise ValidationError(
                f'Invalid ServiceIdentity: invalid ServiceName "{body.servicename}"'
            )
    return tuple(ServiceIdentity(b.servicename, tuple(b.datacenters)) for b in bodies)


def _node_identities(bodies: list[NodeIdentityBody]) -> tuple[NodeIdentity, ...]:
    for body in bodies:
        if not body.nodename or not body.datacenter:
            raise ValidationError("Invalid NodeIdentity: NodeName and Datacenter are required")
    return tuple(NodeIdentity(b.nodename, b.datacenter) for b in bodies)


def _expiry(body: TokenBody, now: float) -> float:
    ttl = _duration.parse(body.expirationttl, "ExpirationTTL")
    if body.expirationtime and ttl:
        raise ValidationError("Expiration TTL and Expiration Time cannot both be set")
    if ttl:
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValidationError("ExpirationTTL must be between 1m0s and 24h0m0s")
        return now + ttl
    if not body.expirationtime:
        return 0.0
    try:
        when = datetime.fromisoformat(body.expirationtime).timestamp()
    except ValueError:
        raise ValidationError(
            f'Invalid ExpirationTime "{body.expirationtime}": use RFC 3339'
        ) from None
    if not now + MIN_TTL <= when <= now + MAX_TTL:
        raise ValidationError("ExpirationTime must be between 1m0s and 24h0m0s from now")
    return when
