"""Consul's service-mesh endpoints: CA roots, leaf certificates, intentions,
the sidecars of a service, and the authorize call.

Reads share the Consul API's blocking-query loop (`ConsulApi.read`); the
leaf endpoint blocks on the leaf's own index, which moves when the leaf is
renewed or the root changes. Writes go through the catalog's one write path
with the plans of `catalog/connect.py`. Certificates come from the agent's
`LeafSigner` (api/ports.py); without the mesh extra there is none and these
endpoints answer 501 with what to install.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec

from .._exceptions import ValidationError
from ..catalog import connect
from ..catalog.aclrules import INTENTION, READ, WRITE
from ..catalog.connect import IntentionBody
from ..catalog.model import CARoot, Intention
from ..catalog.watch import INTENTIONS, ROOTS, connect_topic
from . import access, decode, encode
from .access import Perm
from .consul import ConsulApi
from .http import HttpError, Request, Response, Router, json
from .ports import LeafCert, LeafSigner

SPIFFE_SERVICE = re.compile(r"^spiffe://([^/]+)/ns/[^/]+/dc/[^/]+/svc/([^/]+)$")


class ConnectApi:
    def __init__(
        self, consul: ConsulApi, leaves: LeafSigner | None, default_allow: bool = True
    ) -> None:
        self.consul = consul
        self.catalog = consul.catalog
        self.state = consul.catalog.state
        self.leaves = leaves
        self.default_allow = default_allow  # intentions' default: the ACL default policy

    def routes(self, r: Router) -> None:
        """Methods and ACLs as Consul's (api/access.py): the roots are public;
        a leaf or an authorize call needs `service:write` on its service;
        intentions need `intentions:read|write` on their destination (lists
        filtered by it); a check needs `service:read` on the destination."""
        rows = access.filtered(access.items(_connect_row))
        for path, handler, needs in (
            ("/v1/agent/connect/ca/roots", self.roots, access.OPEN),
            ("/v1/connect/ca/roots", self.roots, access.OPEN),
            ("/v1/agent/connect/ca/leaf/", self.leaf, access.need("service", WRITE)),
            ("/v1/health/connect/", self.health_connect, rows),
            ("/v1/catalog/connect/", self.catalog_connect, rows),
            ("/v1/connect/intentions/check", self.check, _destination("service", READ)),
            ("/v1/connect/intentions/match", self.match, _MATCH),
        ):
            r.add("GET HEAD", path, handler, needs)
        r.add("GET HEAD", "/v1/connect/intentions", self.list_intentions, _LISTED)
        r.add("POST", "/v1/connect/intentions", self.create_intention, _CREATE)
        r.add(
            "GET HEAD",
            "/v1/connect/intentions/exact",
            self.get_exact,
            _destination(INTENTION, READ),
        )
        r.add("PUT", "/v1/connect/intentions/exact", self.put_exact, _destination(INTENTION, WRITE))
        r.add(
            "DELETE",
            "/v1/connect/intentions/exact",
            self.delete_exact,
            _destination(INTENTION, WRITE),
        )
        r.add("GET HEAD", "/v1/connect/intentions/", self.get_by_id, self._by_id(READ))
        r.add("DELETE", "/v1/connect/intentions/", self.delete_by_id, self._by_id(WRITE))
        # py-consul sends PUT, Consul's docs say POST: both (it changes nothing)
        r.add("PUT POST", "/v1/agent/connect/authorize", self.authorize, _AUTHORIZE)

    def _by_id(self, level: int) -> access.Access:
        def needs(ctx: access.Ctx) -> tuple[Perm, ...]:
            found = connect.by_id(self.state, ctx.rest)
            return ((INTENTION, found.destination, level),) if found is not None else ()

        return access.custom(needs)

    # -- certificates ------------------------------------------------------------

    def _signer(self) -> LeafSigner:
        if self.leaves is None:
            raise HttpError(501, "the service mesh is not available: pip install 'waypost[mesh]'")
        return self.leaves

    async def roots(self, req: Request, _: str) -> Response:
        signer = self._signer()
        return await self.consul.read(req, (ROOTS,), lambda: _roots(self.state.roots(), signer))

    async def leaf(self, req: Request, service: str) -> Response:
        signer = self._signer()
        min_index, wait = self.consul.blocking_params(req)
        cert, index = (
            await signer.wait(service, min_index, wait) if min_index else signer.leaf(service)
        )
        return json(_leaf(cert, index), [(b"x-consul-index", str(index).encode())])

    # -- the sidecars of a service -------------------------------------------------

    async def health_connect(self, req: Request, name: str) -> Response:
        passing = decode.passing(req)
        return await self.consul.read(
            req,
            (connect_topic(name),),
            lambda: [encode.health_row(*row) for row in self.state.connect_health(name, passing)],
        )

    async def catalog_connect(self, req: Request, name: str) -> Response:
        return await self.consul.read(
            req,
            (connect_topic(name),),
            lambda: [
                encode.catalog_service(self.state.node(s.node), s)
                for s in self.state.proxies_for(name)
            ],
        )

    # -- intentions --------------------------------------------------------------

    async def list_intentions(self, req: Request, _: str) -> Response:
        return await self.consul.read(
            req,
            (INTENTIONS,),
            lambda: [_intention(i) for i in connect.ordered(self.state.all_intentions())],
        )

    async def get_exact(self, req: Request, _: str) -> Response:
        source, destination = _pair(req)
        found = self.state.intention(source, destination)
        if found is None:
            raise HttpError(
                404, f'Intention not found: no intention from "{source}" to "{destination}"'
            )
        return json(_intention(found))

    async def put_exact(self, req: Request, _: str) -> Response:
        source, destination = _pair(req)
        body = await decode.body_of(req, IntentionBody)
        await self.catalog.write(connect.put_intention, source, destination, body, _now())
        return json(True)

    async def create_intention(self, req: Request, _: str) -> Response:
        """The legacy create: names in the body; answers the new ID."""
        body = await decode.body_of(req, IntentionBody)
        if self.state.intention(body.sourcename, body.destinationname) is not None:
            raise ValidationError(
                f'an intention from "{body.sourcename}" to "{body.destinationname}" exists already'
            )
        made = await self.catalog.write(
            connect.put_intention, body.sourcename, body.destinationname, body, _now()
        )
        return json({"ID": made.id})

    async def delete_exact(self, req: Request, _: str) -> Response:
        await self.catalog.write(connect.delete_intention, *_pair(req))
        return json(True)

    async def get_by_id(self, req: Request, intention_id: str) -> Response:
        found = connect.by_id(self.state, intention_id)
        if found is None:
            raise HttpError(404, f'Intention with ID "{intention_id}" not found')
        return json(_intention(found))

    async def delete_by_id(self, req: Request, intention_id: str) -> Response:
        await self.catalog.write(connect.delete_intention_by_id, intention_id)
        return json(True)

    async def check(self, req: Request, _: str) -> Response:
        source, destination = _pair(req)
        decision = connect.decide(self.state, source, destination, self.default_allow)
        return json({"Allowed": decision.allowed})

    async def match(self, req: Request, _: str) -> Response:
        by, names = req.arg("by"), req.query.get("name", [])
        if not names:
            raise ValidationError("name is required")
        return await self.consul.read(
            req,
            (INTENTIONS,),
            lambda: {n: [_intention(i) for i in connect.matches(self.state, by, n)] for n in names},
        )

    async def authorize(self, req: Request, _: str) -> Response:
        body = await decode.body_of(req, AuthorizeBody)
        if not body.target or not body.clientcerturi:
            raise ValidationError("Target and ClientCertURI are required")
        found = SPIFFE_SERVICE.match(body.clientcerturi)
        if found is None:
            return json(
                {"Authorized": False, "Reason": "ClientCertURI is not a service's SPIFFE ID"}
            )
        domain, source = found.groups()
        if self.leaves is not None and domain != self.leaves.trust_domain:
            reason = f'Client certificate is from trust domain "{domain}", not this CA\'s'
            return json({"Authorized": False, "Reason": reason})
        decision = connect.decide(self.state, source, body.target, self.default_allow)
        return json({"Authorized": decision.allowed, "Reason": decision.reason})


class AuthorizeBody(msgspec.Struct):
    target: str = ""
    clientcerturi: str = ""
    clientcertserial: str = ""


# -- ACLs (api/access.py) ----------------------------------------------------------


def _connect_row(row: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A health or catalog row of a sidecar, filtered like /v1/health/service."""
    if "ServiceName" in row:
        return (("node", row["Node"]), ("service", row["ServiceName"]))
    return (("node", row["Node"]["Node"]), ("service", row["Service"]["Service"]))


def _destination(resource: str, level: int) -> access.Access:
    return access.need(resource, level, lambda ctx: ctx.req.arg("destination"))


def _intention_destination(i: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return ((INTENTION, i["DestinationName"]),)


def _match_filter(authz: Any, answer: dict[str, list[dict[str, Any]]]) -> tuple[Any, bool]:
    kept, dropped = {}, False
    for name, found in answer.items():
        kept[name], gone = access.items(_intention_destination)(authz, found)
        dropped = dropped or gone
    return kept, dropped


async def _create_needs(ctx: access.Ctx) -> tuple[Perm, ...]:
    body = await ctx.body(IntentionBody)
    return ((INTENTION, body.destinationname, WRITE),)


async def _authorize_needs(ctx: access.Ctx) -> tuple[Perm, ...]:
    body = await ctx.body(AuthorizeBody)
    return (("service", body.target, WRITE),) if body.target else ()


_reads_pair = _destination(INTENTION, READ)
_writes_pair = _destination(INTENTION, WRITE)
_LISTED = access.filtered(access.items(_intention_destination))
_MATCH = access.filtered(_match_filter)
_CREATE = access.custom(_create_needs)
_AUTHORIZE = access.custom(_authorize_needs)


def _pair(req: Request) -> tuple[str, str]:
    source, destination = req.arg("source"), req.arg("destination")
    if not source or not destination:
        raise ValidationError("source and destination query parameters are required")
    return source, destination


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _roots(roots: list[CARoot], signer: LeafSigner) -> dict[str, Any]:
    active = next((r.id for r in roots if r.active), "")
    return {
        "ActiveRootID": active,
        "TrustDomain": signer.trust_domain,
        "Roots": [
            {
                "ID": r.id,
                "Name": r.name,
                "SerialNumber": r.serial_number,
                "SigningKeyID": r.signing_key_id,
                "ExternalTrustDomain": r.trust_domain,
                "NotBefore": r.not_before,
                "NotAfter": r.not_after,
                "RootCert": r.root_cert,
                "IntermediateCerts": [],
                "Active": r.active,
                "PrivateKeyType": r.private_key_type,
                "PrivateKeyBits": r.private_key_bits,
                "CreateIndex": r.create_index,
                "ModifyIndex": r.modify_index,
            }
            for r in roots
        ],
    }


def _leaf(cert: LeafCert, index: int) -> dict[str, Any]:
    return {
        "SerialNumber": cert.serial_number,
        "CertPEM": cert.cert_pem,
        "PrivateKeyPEM": cert.private_key_pem,
        "Service": cert.service,
        "ServiceURI": cert.service_uri,
        "ValidAfter": cert.valid_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ValidBefore": cert.valid_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def _intention(i: Intention) -> dict[str, Any]:
    return {
        "ID": i.id,
        "Description": i.description,
        "SourceNS": "default",
        "SourceName": i.source,
        "DestinationNS": "default",
        "DestinationName": i.destination,
        "SourceType": "consul",
        "Action": i.action,
        "Meta": i.meta,
        "Precedence": connect.precedence(i),
        "CreatedAt": i.created_at,
        "UpdatedAt": i.updated_at,
        "CreateIndex": i.create_index,
        "ModifyIndex": i.modify_index,
    }


intention_json = _intention  # the UI's mesh view (api/ui_intentions.py) shows the same shape
