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
from ..catalog.connect import IntentionBody
from ..catalog.model import CARoot, Intention
from ..catalog.watch import INTENTIONS, ROOTS, connect_topic
from . import decode, encode
from .consul import ConsulApi
from .http import HttpError, Request, Response, Router, json
from .ports import LeafCert, LeafSigner

SPIFFE_SERVICE = re.compile(r"^spiffe://([^/]+)/ns/[^/]+/dc/[^/]+/svc/([^/]+)$")


class ConnectApi:
    def __init__(self, consul: ConsulApi, leaves: LeafSigner | None) -> None:
        self.consul = consul
        self.catalog = consul.catalog
        self.state = consul.catalog.state
        self.leaves = leaves

    def routes(self, r: Router) -> None:
        for path, handler in {
            "/v1/agent/connect/ca/roots": self.roots,
            "/v1/connect/ca/roots": self.roots,
            "/v1/agent/connect/ca/leaf/": self.leaf,
            "/v1/health/connect/": self.health_connect,
            "/v1/catalog/connect/": self.catalog_connect,
            "/v1/connect/intentions/check": self.check,
            "/v1/connect/intentions/match": self.match,
        }.items():
            r.add("GET HEAD", path, handler)
        r.add("GET HEAD", "/v1/connect/intentions", self.list_intentions)
        r.add("POST", "/v1/connect/intentions", self.create_intention)
        r.add("GET HEAD", "/v1/connect/intentions/exact", self.get_exact)
        r.add("PUT POST", "/v1/connect/intentions/exact", self.put_exact)
        r.add("DELETE", "/v1/connect/intentions/exact", self.delete_exact)
        r.add("GET HEAD", "/v1/connect/intentions/", self.get_by_id)
        r.add("DELETE", "/v1/connect/intentions/", self.delete_by_id)
        r.add("PUT POST", "/v1/agent/connect/authorize", self.authorize)

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
        passing = req.has("passing") and req.arg("passing").lower() not in ("false", "0")
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
        body = decode.decode(await req.body(), IntentionBody)
        await self.catalog.write(connect.put_intention, source, destination, body, _now())
        return json(True)

    async def create_intention(self, req: Request, _: str) -> Response:
        """The legacy create: names in the body; answers the new ID."""
        body = decode.decode(await req.body(), IntentionBody)
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
        return json({"Allowed": connect.decide(self.state, source, destination).allowed})

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
        body = decode.decode(await req.body(), AuthorizeBody)
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
        decision = connect.decide(self.state, source, body.target)
        return json({"Authorized": decision.allowed, "Reason": decision.reason})


class AuthorizeBody(msgspec.Struct):
    target: str = ""
    clientcerturi: str = ""
    clientcertserial: str = ""


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
