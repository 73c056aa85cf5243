"""Consul's sessions and user events over HTTP: `/v1/session/...`, `/v1/event/...`.

Parsing and encoding only: writes are plans of `catalog/kvwrites.py` run
through `Catalog.write`; reads block through `ConsulApi.block`. Which agent
invalidates a session is the agent's business (agent/sessions.py).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec

from .. import _duration
from .._exceptions import NotFoundError, ValidationError
from ..catalog import Catalog, kvwrites
from ..catalog.aclrules import WRITE
from ..catalog.kvwrites import EventRequest, SessionRequest
from ..catalog.sessions import EVENTS, SESSIONS, Event, Session, session_node_topic, session_topic
from . import access, decode
from .access import Perm
from .consul import ConsulApi
from .http import Request, Response, Router, json

JSON = dict[str, Any]
TTL_MAX = 86400.0
LOCK_DELAY_SECONDS_BELOW = 1000  # Consul: a bare LockDelay number under this is seconds


class _ServiceCheck(msgspec.Struct):
    id: str = ""
    namespace: str = ""


class _CreateBody(msgspec.Struct):
    name: str = ""
    node: str = ""
    checks: list[str] | None = None
    nodechecks: list[str] | None = None
    servicechecks: list[_ServiceCheck] = []
    lockdelay: str | int | float = ""
    behavior: str = "release"
    ttl: str = ""


def session_json(s: Session) -> JSON:
    return {
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": round(s.lock_delay * 1e9),
        "Behavior": s.behavior,
        "TTL": _duration.format(s.ttl) if s.ttl else "",
        "Checks": list(s.checks()),
        "NodeChecks": list(s.node_checks),
        "ServiceChecks": [{"ID": c, "Namespace": ""} for c in s.service_checks] or None,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    }


def event_json(e: Event) -> JSON:
    return {
        "ID": e.id,
        "Name": e.name,
        "Payload": base64.b64encode(e.payload).decode() if e.payload else None,
        "NodeFilter": e.node_filter,
        "ServiceFilter": e.service_filter,
        "TagFilter": e.tag_filter,
        "Version": 1,
        "LTime": e.ltime,
    }


class SessionApi:
    def __init__(self, consul: ConsulApi, catalog: Catalog, ttl_min: float) -> None:
        self.consul = consul
        self.catalog = catalog
        self.state = catalog.state
        self.ttl_min = ttl_min

    def routes(self, r: Router) -> None:
        """PUT only for writes, as Consul's. ACLs as Consul's: `session:write`
        on the session's node, lists filtered by `session:read` on it;
        `event:write` on an event's name, the list filtered by `event:read`."""
        own = access.custom(self._session_needs)
        sessions = access.filtered(access.items(_session_node))
        r.add("PUT", "/v1/session/create", self.create, access.custom(self._create_needs))
        r.add("PUT", "/v1/session/destroy/", self.destroy, own)
        r.add("PUT", "/v1/session/renew/", self.renew, own)
        r.add("GET HEAD", "/v1/session/info/", self.info, sessions)
        r.add("GET HEAD", "/v1/session/node/", self.node, sessions)
        r.add("GET HEAD", "/v1/session/list", self.list, sessions)
        r.add("PUT", "/v1/event/fire/", self.fire, access.need("event", WRITE))
        r.add("GET HEAD", "/v1/event/list", self.events, access.filtered(access.items(_event)))

    async def _create_needs(self, ctx: access.Ctx) -> tuple[Perm, ...]:
        body = await ctx.body(_CreateBody)
        return (("session", body.node or ctx.node, WRITE),)

    def _session_needs(self, ctx: access.Ctx) -> tuple[Perm, ...]:
        session = self.state.sessions.get(ctx.rest)
        return (("session", session.node, WRITE),) if session is not None else ()

    # -- sessions ----------------------------------------------------------

    async def create(self, req: Request, _: str) -> Response:
        request = self._request(await decode.body_of(req, _CreateBody))
        session_id = await self.catalog.write(
            kvwrites.session_create, request, self.ttl_min, TTL_MAX
        )
        return json({"ID": session_id})

    def _request(self, body: _CreateBody) -> SessionRequest:
        return SessionRequest(
            name=body.name,
            node=body.node or self.consul.local.name,
            checks=body.checks,
            node_checks=body.nodechecks,
            service_checks=[c.id for c in body.servicechecks],
            lock_delay=_lock_delay(body.lockdelay),
            behavior=body.behavior or "release",
            ttl=_duration.parse(body.ttl, "TTL") if body.ttl else 0.0,
        )

    async def destroy(self, req: Request, session_id: str) -> Response:
        _need_id(session_id)
        return json(await self.catalog.write(kvwrites.session_destroy, session_id))

    async def renew(self, req: Request, session_id: str) -> Response:
        _need_id(session_id)
        if self.state.sessions.get(session_id) is None:
            raise NotFoundError(f"Session id '{session_id}' not found")
        await self.catalog.write(kvwrites.session_renew, session_id)
        renewed = self.state.sessions.get(session_id)
        if renewed is None:  # invalidated between the renew and this read
            raise NotFoundError(f"Session id '{session_id}' not found")
        return json([session_json(renewed)])

    async def info(self, req: Request, session_id: str) -> Response:
        _need_id(session_id)
        index = await self.consul.block(req, (session_topic(session_id),))
        found = self.state.sessions.get(session_id)
        body = [session_json(found)] if found else []
        return _filtered(req, body, self.consul.read_headers(index, req))

    async def node(self, req: Request, node: str) -> Response:
        if not node:
            raise ValidationError("Missing node name")
        index = await self.consul.block(req, (session_node_topic(node),))
        body = [session_json(s) for s in self.state.sessions.on_node(node)]
        return _filtered(req, body, self.consul.read_headers(index, req))

    async def list(self, req: Request, _: str) -> Response:
        index = await self.consul.block(req, (SESSIONS,))
        body = [session_json(s) for s in self.state.sessions.all()]
        return _filtered(req, body, self.consul.read_headers(index, req))

    # -- events ------------------------------------------------------------

    async def fire(self, req: Request, name: str) -> Response:
        request = EventRequest(
            name=name,
            payload=(await req.body()) or None,
            node_filter=req.arg("node"),
            service_filter=req.arg("service"),
            tag_filter=req.arg("tag"),
        )
        event = await self.catalog.write(kvwrites.event_fire, request)
        return json(event_json(msgspec.structs.replace(event, ltime=0)))

    async def events(self, req: Request, _: str) -> Response:
        """The events this agent received (its node, services and tags match
        the event's filters), oldest first; `?name` keeps one name."""
        index = await self.consul.block(req, (EVENTS,))
        name = req.arg("name")
        found = [
            event_json(e)
            for e in self.state.events.events()
            if (not name or e.name == name) and self._receives(e)
        ]
        return _filtered(req, found, self.consul.read_headers(index, req))

    def _receives(self, event: Event) -> bool:
        local = self.consul.local.name
        if event.node_filter and not re.search(event.node_filter, local):
            return False
        if not event.service_filter:
            return True
        for service in self.state.services_on(local).values():
            if re.search(event.service_filter, service.name) and (
                not event.tag_filter or any(re.search(event.tag_filter, t) for t in service.tags)
            ):
                return True
        return False


def _filtered(req: Request, answer: Any, headers: list[tuple[bytes, bytes]]) -> Response:
    shown, filtered = access.apply_filter(req, answer)
    return json(shown, [*headers, access.FILTERED_HEADER] if filtered else headers)


def _session_node(session: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (("session", session["Node"]),)


def _event(event: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (("event", event["Name"]),)


def _need_id(session_id: str) -> None:
    if not session_id:
        raise ValidationError("Missing session")


def _lock_delay(value: str | int | float) -> float:
    """Consul's rule: a string is a Go duration ("15s", "0.001s"); a number
    below 1000 is seconds, anything larger nanoseconds; absent is 15 s."""
    if value == "":
        return 15.0
    if isinstance(value, str):
        return _duration.parse(value, "LockDelay")
    if value < LOCK_DELAY_SECONDS_BELOW:
        return float(value)
    return value / 1e9
