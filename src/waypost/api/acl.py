"""Consul's /v1/acl endpoints: bootstrap, policies, roles, tokens.

Parse, run a plan of `catalog/aclwrites.py` through the one write path,
encode in Consul's shapes. IDs and secrets are drawn here (uuid4, from the
OS's CSPRNG) and handed to the plans. Reads are blocking queries on the ACL
topic. On an agent without ACLs every endpoint answers 401 "ACL support
disabled", as Consul does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from .._exceptions import AclDisabled, NotFoundError, ValidationError
from ..catalog import Catalog, aclwrites
from ..catalog.acl import ACL, AclTable, record_hash
from ..catalog.aclrules import READ, WRITE
from ..catalog.aclwrites import PolicyBody, RoleBody, TokenBody
from ..catalog.model import NodeIdentity, Policy, Role, ServiceIdentity, Token
from . import access, decode
from .http import Request, Response, Router, json, json_bytes

HIDDEN: Final = "<hidden>"  # a secret shown to a token that may read ACLs but not write them
_ACL_READ: Final = access.need("acl", READ, "")
_ACL_WRITE: Final = access.need("acl", WRITE, "")

Read = Callable[[Request, tuple[tuple[str, str], ...], Callable[[], Any]], Awaitable[Response]]


class AclApi:
    """Args:
    catalog: Where ACL records live (`catalog.state.acl`), written by plans.
    read: `ConsulApi.read`: the blocking-read path every read shares.
    enabled: False: every endpoint answers 401.
    """

    def __init__(self, catalog: Catalog, read: Read, enabled: bool) -> None:
        self.catalog = catalog
        self.table: AclTable = catalog.state.acl
        self.read = read
        self.enabled = enabled

    def routes(self, r: Router) -> None:
        r.add("PUT", "/v1/acl/bootstrap", self.bootstrap, access.PUBLIC)
        for kind, create, one, by_name, listing in (
            ("policy", self.policy_create, self.policy, self.policy_by_name, self.policies),
            ("role", self.role_create, self.role, self.role_by_name, self.roles),
            ("token", self.token_create, self.token, None, self.tokens),
        ):
            plural = "policies" if kind == "policy" else f"{kind}s"
            r.add("PUT", f"/v1/acl/{kind}", create, _ACL_WRITE)
            r.add("GET HEAD", f"/v1/acl/{kind}/", one, _ACL_READ)
            r.add("PUT DELETE", f"/v1/acl/{kind}/", one, _ACL_WRITE)
            if by_name is not None:
                r.add("GET HEAD", f"/v1/acl/{kind}/name/", by_name, _ACL_READ)
            r.add("GET HEAD", f"/v1/acl/{plural}", listing, _ACL_READ)
        r.add("GET HEAD", "/v1/acl/token/self", self.token_self, access.OPEN)

    def _on(self) -> None:
        if not self.enabled:
            raise AclDisabled()

    # -- bootstrap -------------------------------------------------------------

    async def bootstrap(self, req: Request, _: str) -> Response:
        self._on()
        body = await decode.body_of(req, _BootstrapBody)
        secret = body.bootstrapsecret or str(uuid.uuid4())
        token = await self.catalog.write(
            aclwrites.bootstrap, str(uuid.uuid4()), secret, time.time()
        )
        return json(self._token(self._stored(token), show_secret=True))

    # -- policies --------------------------------------------------------------

    async def policy_create(self, req: Request, _: str) -> Response:
        self._on()
        body = await decode.body_of(req, PolicyBody)
        policy = await self.catalog.write(aclwrites.set_policy, body, str(uuid.uuid4()), True)
        return json(_policy(self._stored(policy)))

    async def policy(self, req: Request, policy_id: str) -> Response:
        self._on()
        if req.method == "DELETE":
            await self.catalog.write(aclwrites.delete_policy, policy_id)
            return json_bytes(b"true")
        if req.method == "PUT":
            body = await decode.body_of(req, PolicyBody)
            _same_id(body.id, policy_id, "Policy")
            policy = await self.catalog.write(aclwrites.set_policy, body, policy_id, False)
            return json(_policy(self._stored(policy)))
        return await self._one(req, lambda: self.table.policies.get(policy_id), _policy)

    async def policy_by_name(self, req: Request, name: str) -> Response:
        self._on()
        return await self._one(req, lambda: self._policy_named(name), _policy)

    def _policy_named(self, name: str) -> Policy | None:
        policy_id = self.table.policy_names.get(name)
        return self.table.policies.get(policy_id) if policy_id else None

    async def policies(self, req: Request, _: str) -> Response:
        self._on()
        return await self.read(
            req,
            (ACL,),
            lambda: [_policy(p, stub=True) for p in _by_name(self.table.policies.values())],
        )

    # -- roles -----------------------------------------------------------------

    async def role_create(self, req: Request, _: str) -> Response:
        self._on()
        body = await decode.body_of(req, RoleBody)
        role = await self.catalog.write(aclwrites.set_role, body, str(uuid.uuid4()), True)
        return json(self._role(self._stored(role)))

    async def role(self, req: Request, role_id: str) -> Response:
        self._on()
        if req.method == "DELETE":
            await self.catalog.write(aclwrites.delete_role, role_id)
            return json_bytes(b"true")
        if req.method == "PUT":
            body = await decode.body_of(req, RoleBody)
            _same_id(body.id, role_id, "Role")
            role = await self.catalog.write(aclwrites.set_role, body, role_id, False)
            return json(self._role(self._stored(role)))
        return await self._one(req, lambda: self.table.roles.get(role_id), self._role)

    async def role_by_name(self, req: Request, name: str) -> Response:
        self._on()

        def find() -> Role | None:
            role_id = self.table.role_names.get(name)
            return self.table.roles.get(role_id) if role_id else None

        return await self._one(req, find, self._role)

    async def roles(self, req: Request, _: str) -> Response:
        self._on()
        policy = req.arg("policy")
        return await self.read(
            req,
            (ACL,),
            lambda: [
                self._role(r)
                for r in _by_name(self.table.roles.values())
                if not policy or policy in r.policies
            ],
        )

    # -- tokens ----------------------------------------------------------------

    async def token_create(self, req: Request, _: str) -> Response:
        self._on()
        body = await decode.body_of(req, TokenBody)
        accessor = body.accessorid or str(uuid.uuid4())
        secret = body.secretid or str(uuid.uuid4())
        _check_uuid(accessor, "AccessorID")
        _check_uuid(secret, "SecretID")
        token = await self.catalog.write(
            aclwrites.set_token, body, accessor, secret, True, time.time()
        )
        return json(self._token(self._stored(token), show_secret=True))

    async def token(self, req: Request, accessor: str) -> Response:
        self._on()
        if req.method == "DELETE":
            await self.catalog.write(aclwrites.delete_token, accessor)
            return json_bytes(b"true")
        if req.method == "PUT":
            body = await decode.body_of(req, TokenBody)
            if body.accessorid and body.accessorid != accessor:
                raise ValidationError("Token Accessor ID in URL and payload do not match")
            token = await self.catalog.write(
                aclwrites.set_token, body, accessor, "", False, time.time()
            )
            return json(self._token(self._stored(token), show_secret=True))
        show = _may_write_acl(req)
        return await self._one(
            req, lambda: self.table.tokens.get(accessor), lambda t: self._token(t, show)
        )

    async def token_self(self, req: Request, _: str) -> Response:
        self._on()
        accessor = req.authz.accessor if req.authz is not None else ""
        return await self._one(
            req, lambda: self.table.tokens.get(accessor), lambda t: self._token(t, True)
        )

    async def tokens(self, req: Request, _: str) -> Response:
        self._on()
        show = _may_write_acl(req)
        policy, role, service = req.arg("policy"), req.arg("role"), req.arg("servicename")

        def wanted(t: Token) -> bool:
            return (
                (not policy or policy in t.policies)
                and (not role or role in t.roles)
                and (not service or any(i.service_name == service for i in t.service_identities))
            )

        return await self.read(
            req,
            (ACL,),
            lambda: [
                self._token(t, show)
                for t in sorted(self.table.tokens.values(), key=lambda t: t.accessor_id)
                if wanted(t)
            ],
        )

    # -- shapes ----------------------------------------------------------------

    async def _one(
        self, req: Request, find: Callable[[], Any], shape: Callable[[Any], Any]
    ) -> Response:
        if find() is None:
            raise NotFoundError("ACL not found")
        return await self.read(req, (ACL,), lambda: shape(find()) if find() is not None else None)

    def _stored(self, record: Any) -> Any:
        """The record as applied (with its indexes), after the write that made it."""
        if isinstance(record, Policy):
            return self.table.policies.get(record.id, record)
        if isinstance(record, Role):
            return self.table.roles.get(record.id, record)
        return self.table.tokens.get(record.accessor_id, record)

    def _links(self, ids: tuple[str, ...], names: dict[str, Any]) -> list[dict[str, str]]:
        """ID links with the records' current names; links to deleted records are dropped."""
        return [{"ID": i, "Name": names[i].name} for i in ids if i in names]

    def _role(self, r: Role) -> dict[str, Any]:
        out: dict[str, Any] = {"ID": r.id, "Name": r.name, "Description": r.description}
        _add_links(out, "Policies", self._links(r.policies, self.table.policies))
        _add_identities(out, r.service_identities, r.node_identities)
        out.update(Hash=record_hash(r), CreateIndex=r.create_index, ModifyIndex=r.modify_index)
        return out

    def _token(self, t: Token, show_secret: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "AccessorID": t.accessor_id,
            "SecretID": t.secret_id if show_secret else HIDDEN,
            "Description": t.description,
        }
        _add_links(out, "Policies", self._links(t.policies, self.table.policies))
        _add_links(out, "Roles", self._links(t.roles, self.table.roles))
        _add_identities(out, t.service_identities, t.node_identities)
        out["Local"] = t.local
        if t.expiration_time:
            out["ExpirationTime"] = _rfc3339(t.expiration_time)
        out.update(
            CreateTime=_rfc3339(t.create_time),
            Hash=record_hash(t),
            CreateIndex=t.create_index,
            ModifyIndex=t.modify_index,
        )
        return out


class _BootstrapBody(TokenBody):
    bootstrapsecret: str = ""


def _policy(p: Policy, stub: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"ID": p.id, "Name": p.name, "Description": p.description}
    if not stub:
        out["Rules"] = p.rules
    if p.datacenters:
        out["Datacenters"] = list(p.datacenters)
    out.update(Hash=record_hash(p), CreateIndex=p.create_index, ModifyIndex=p.modify_index)
    return out


def _add_links(out: dict[str, Any], field: str, links: list[dict[str, str]]) -> None:
    if links:  # Consul omits empty link lists
        out[field] = links


def _add_identities(
    out: dict[str, Any], services: tuple[ServiceIdentity, ...], nodes: tuple[NodeIdentity, ...]
) -> None:
    if services:
        out["ServiceIdentities"] = [
            {
                "ServiceName": s.service_name,
                **({"Datacenters": list(s.datacenters)} if s.datacenters else {}),
            }
            for s in services
        ]
    if nodes:
        out["NodeIdentities"] = [
            {"NodeName": n.node_name, "Datacenter": n.datacenter} for n in nodes
        ]


def _by_name(records: Any) -> list[Any]:
    return sorted(records, key=lambda r: r.name)


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _may_write_acl(req: Request) -> bool:
    return req.authz is None or req.authz.allowed("acl", "", WRITE)


def _same_id(body_id: str, path_id: str, what: str) -> None:
    if body_id and body_id != path_id:
        raise ValidationError(f"{what} ID in URL and payload do not match")


def _check_uuid(value: str, field: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValidationError(f'Invalid Token: {field} "{value}" is not a UUID') from None
