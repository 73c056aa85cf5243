"""Consul's v1 HTTP API: parse, call the catalog or the local agent, encode.

Every read goes through `_read`, the one blocking-query path: it validates
`index`/`wait`, sleeps on the topics the read touches, and serves the encoded
answer from a cache keyed by the request and valid while the topics' index
stands still, so a hot `?passing` read costs one dict lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgspec

from .._bounded import ByteBoundedCache
from .._exceptions import NotFoundError, RefusedError, ValidationError
from ..catalog import Catalog, Service, writes
from ..catalog.aclrules import READ, WRITE
from ..catalog.definitions import (
    CatalogDeregistration,
    CatalogRegistration,
    CheckRegistration,
    CheckUpdate,
    ServiceRegistration,
)
from ..catalog.model import CONSUL_SERVICE_ID, SERF_CHECK_ID, STATUSES
from ..catalog.watch import CHECKS, NODES, SERVICES, Topic, node_topic, service_topic
from . import access, decode, encode, filter_fields
from . import consul_needs as acl
from .access import check_names, filtered, items, values
from .filter import Predicate, compile_filter
from .http import Request, Response, Router, empty, json, json_bytes
from .ports import AgentInfo, LocalAgentOps, StoreStatus

log = logging.getLogger("waypost.api")

# The answer cache is bounded by bytes, not entries: one service with 900 KB of
# Meta read with distinct query strings would otherwise hold 4,096 copies.
CACHE_BYTES = 64 << 20
_ENCODER = msgspec.json.Encoder()
_TRUE = b"true"
# A read's topics and the function that produces its answer (unencoded).
Read = tuple[tuple[Topic, ...], Callable[[], Any]]


# Consul's structs.ErrNoDCPath. Its own answer stops there (the name is only in
# the server's log); clients recognise it by this text (Consul's IsErrNoDCPath
# looks for it anywhere in the message), so the name goes after it.
NO_DC_PATH: Final = "No path to datacenter"
# Consul's agent endpoints are the local agent's own and ignore `?dc=`, as does
# the list of datacenters; everything else under /v1/ is forwarded by it.
_LOCAL_ONLY: Final = ("/v1/agent/", "/v1/catalog/datacenters")


# Query parameters of Consul Enterprise, which Consul OSS refuses (agent/http_ce.go).
# Consul Enterprise's scopes: (query parameter, header as ASGI spells it, header, feature).
_ENTERPRISE: Final = (
    ("ns", b"x-consul-namespace", "X-Consul-Namespace", "Namespaces"),
    ("partition", b"x-consul-partition", "X-Consul-Partition", "Partitions"),
)
SCOPE_HEADERS: Final = frozenset(h for _, h, _, _ in _ENTERPRISE)


def takes_datacenter(path: str) -> bool:
    """Whether `?dc=` names the datacenter a request is for (Consul's endpoints
    that forward to another datacenter), rather than being ignored."""
    return path.startswith("/v1/") and not path.startswith(_LOCAL_ONLY)


def no_dc_path(asked: str, served: str) -> str:
    return f'{NO_DC_PATH} "{asked}": this agent serves datacenter "{served}" only'


class ConsulApi:
    def __init__(
        self, catalog: Catalog, local: LocalAgentOps, info: AgentInfo, store: StoreStatus
    ) -> None:
        self.catalog = catalog
        self.state = catalog.state
        self.local = local
        self.info = info
        self.store = store
        self._cache: ByteBoundedCache[_Cached] = ByteBoundedCache(
            CACHE_BYTES, lambda c: len(c.body)
        )
        self.rng = random.Random()

    def routes(self, r: Router) -> None:
        """Every endpoint with what it needs under ACLs (api/access.py): the
        permissions a request must hold, and how a list answer is filtered."""
        for path, handler, declared in (
            ("/v1/agent/services", self.agent_services, filtered(values(acl.service_of))),
            ("/v1/agent/service/", self.agent_service, access.own_service(READ)),
            ("/v1/agent/checks", self.agent_checks, filtered(values(check_names))),
            ("/v1/agent/self", self.agent_self, access.agent(READ)),
            ("/v1/agent/members", self.agent_members, filtered(items(acl.member_node))),
            ("/v1/catalog/services", self.catalog_services, filtered(access.keys("service"))),
            ("/v1/catalog/service/", self.catalog_service, filtered(items(acl.catalog_row))),
            ("/v1/catalog/nodes", self.catalog_nodes, filtered(items(acl.node_of))),
            ("/v1/catalog/node/", self.catalog_node, filtered(acl.node_services)),
            ("/v1/catalog/datacenters", self.datacenters, access.OPEN),
            ("/v1/health/service/", self.health_service, filtered(items(acl.health_row))),
            ("/v1/health/checks/", self.health_checks, filtered(items(check_names))),
            ("/v1/health/state/", self.health_state, filtered(items(check_names))),
            ("/v1/health/node/", self.health_node, filtered(items(check_names))),
            ("/v1/status/leader", self.status_leader, access.OPEN),
            ("/v1/status/peers", self.status_peers, access.OPEN),
        ):
            r.add("GET HEAD", path, handler, declared)
        # Writes take PUT only, as Consul's: a web page can send a POST with a
        # text/plain body cross-site without a CORS preflight, never a PUT.
        for path, writer, declared in (
            ("/v1/agent/service/register", self.service_register, acl.register_needs),
            ("/v1/agent/service/deregister/", self.service_deregister, access.own_service(WRITE)),
            ("/v1/agent/service/maintenance/", self.service_maintenance, access.own_service(WRITE)),
            ("/v1/agent/maintenance", self.node_maintenance, access.need("node", WRITE, acl.own)),
            ("/v1/agent/check/register", self.check_register, acl.check_register_needs),
            ("/v1/agent/check/deregister/", self.check_deregister, access.own_check(WRITE)),
            ("/v1/agent/check/pass/", self.check_pass, access.own_check(WRITE)),
            ("/v1/agent/check/warn/", self.check_warn, access.own_check(WRITE)),
            ("/v1/agent/check/fail/", self.check_fail, access.own_check(WRITE)),
            ("/v1/agent/check/update/", self.check_update, access.own_check(WRITE)),
            ("/v1/catalog/register", self.catalog_register, acl.catalog_register_needs),
            ("/v1/catalog/deregister", self.catalog_deregister, acl.catalog_deregister_needs),
        ):
            r.add("PUT", path, writer, declared)

    def check_scope(self, req: Request) -> None:
        """The scope a request asks for, which every endpoint checks first
        (AgentApp.respond): Consul Enterprise's `?ns=` and `?partition=`, and
        their headers `X-Consul-Namespace` and `X-Consul-Partition`, are
        refused with Consul OSS's 400 rather than ignored (a scrape config
        with a namespace would otherwise get the whole registry), and another
        datacenter as `check_datacenter` says."""
        # Every request comes here: a plain loop (no comprehension's frame and
        # set), and a name hashed only at the headers' length (both are 18 bytes).
        scoped = False
        for header, value in req.headers:
            if len(header) == 18 and header in SCOPE_HEADERS and value:
                scoped = True
                break
        if not (scoped or req.query):
            return  # the common case: nothing to check
        given = {h for h, value in req.headers if h in SCOPE_HEADERS and value} if scoped else ()
        for param, header, spelled, feature in _ENTERPRISE:  # in Consul OSS's order
            if header in given:
                raise ValidationError(
                    f'Invalid header: "{spelled}" - {feature} are a Consul Enterprise feature'
                )
            if req.arg(param):
                raise ValidationError(
                    f'Invalid query parameter: "{param}" - {feature} are a Consul Enterprise'
                    " feature"
                )
        self.check_datacenter(req)

    def check_datacenter(self, req: Request, named: str = "") -> None:
        """A request for another datacenter (`?dc=` on an endpoint that takes
        it, or a body's Datacenter): Consul answers 500 "No path to datacenter"
        and writes nothing; waypost serves one datacenter, so it does the same
        rather than serve this one's data. Every endpoint goes through here."""
        dc = named or (req.arg("dc") if takes_datacenter(req.path) else "")
        if dc and dc != self.info.datacenter:
            raise RefusedError(no_dc_path(dc, self.info.datacenter))

    # -- the blocking read path ------------------------------------------

    async def _read(
        self,
        req: Request,
        topics: tuple[Topic, ...],
        produce: Callable[[], Any],
        cache: bool = True,
    ) -> Response:
        index = await self.block(req, topics)
        return self.answer(req, index, produce, cache)

    def answer(
        self, req: Request, index: int, produce: Callable[[], Any], cache: bool = True
    ) -> Response:
        """A read's answer at `index`, from the encoded-answer cache when it
        holds one for that index (the blocking is done: `_read`, or the
        protocol's fast path, api/fastpath.py)."""
        authz = req.authz
        # With ACLs on, an answer is the token's: cached per token and ACL generation.
        key = (req.path, _query_key(req), authz.key if authz is not None else None)
        # The generation the authorizer was built at, not the current one: a
        # request admitted before an ACL change must not fill the new one's cache.
        version = (index, self.state.outputs, authz.generation if authz is not None else 0)
        hit = self._cache.get(key) if cache else None
        if hit is not None and hit.version == version:
            body, filtered_out = hit.body, hit.filtered
        else:
            body, filtered_out = self._produce(req, produce)
            if cache:
                self._cache.put(key, _Cached(version, body, filtered_out))
        headers = self._read_headers(index, req)
        if filtered_out:
            headers.append(access.FILTERED_HEADER)
        return json_bytes(body, headers)

    def _produce(self, req: Request, produce: Callable[[], Any]) -> tuple[bytes, bool]:
        """Encode a read's answer, less what the token may not see."""
        answer, filtered_out = access.apply_filter(req, produce())
        return _ENCODER.encode(answer), filtered_out

    async def block(self, req: Request, topics: tuple[Topic, ...]) -> int:
        """Hold a read until its topics pass `?index` (or `?wait` runs out);
        return the index to report. Every blocking read goes through here."""
        min_index, wait = self._blocking_params(req)
        if req.has("consistent"):
            await self.store.confirm()
        if min_index:
            await self.catalog.block(topics, min_index, self._jittered(wait), req.connection_lost)
        return self.state.index_of(topics)

    def _jittered(self, wait: float) -> float:
        """`wait` plus up to wait/16, as Consul spreads its blocking queries' ends."""
        return wait + self.rng.uniform(0, wait / 16)

    def read_headers(self, index: int, req: Request) -> list[tuple[bytes, bytes]]:
        return self._read_headers(index, req)

    async def read(
        self,
        req: Request,
        topics: tuple[Topic, ...],
        produce: Callable[[], Any],
        cache: bool = True,
    ) -> Response:
        """The blocking read path, for the API's other route sets (api/connect.py,
        api/internal_ui.py); `cache=False` for answers that change without an index."""
        return await self._read(req, topics, produce, cache)

    def blocking_params(self, req: Request) -> tuple[int, float]:
        """`?index` and `?wait`, validated (ValidationError)."""
        return self._blocking_params(req)

    def _blocking_params(self, req: Request) -> tuple[int, float]:
        decode.consistency(req)  # validated before the read blocks
        return decode.index_and_wait(req)

    def _read_headers(self, index: int, req: Request) -> list[tuple[bytes, bytes]]:
        health = self.store.health()
        return [
            (b"x-consul-index", str(index).encode()),
            (b"x-consul-knownleader", b"true" if health.known_leader else b"false"),
            (b"x-consul-lastcontact", str(health.last_contact_ms).encode()),
            (b"x-consul-effective-consistency", decode.consistency(req)),
        ]

    # -- agent reads -------------------------------------------------------

    def _own_services(self) -> dict[str, Service]:
        """The instances registered with this agent: its node's, less the
        `consul` service (a server's catalog entry, not an agent service)."""
        own = self.state.services_on(self.local.name)
        if CONSUL_SERVICE_ID in own:
            own = {sid: s for sid, s in own.items() if sid != CONSUL_SERVICE_ID}
        return own

    async def agent_services(self, req: Request, _: str) -> Response:
        dc = self.info.datacenter
        keep = _selection(req, filter_fields.AGENT_SERVICE) or _everything
        return await self._read(
            req,
            (node_topic(self.local.name),),
            lambda: {
                sid: row
                for sid, s in sorted(self._own_services().items())
                if keep(row := encode.agent_service(s, dc))
            },
        )

    async def agent_service(self, req: Request, service_id: str) -> Response:
        service = self._own_services().get(service_id)
        if service is None:
            raise NotFoundError(f'unknown service ID: "{service_id}"')
        return await self._hash_read(
            req,
            (node_topic(self.local.name),),
            lambda: encode.agent_service(
                self._own_services().get(service_id, service), self.info.datacenter
            ),
        )

    async def _hash_read(
        self, req: Request, topics: tuple[Topic, ...], produce: Callable[[], Any]
    ) -> Response:
        """Consul's hash-based blocking (agentLocalBlockingQuery), for agent
        endpoints: every answer names its content in `X-Consul-ContentHash`;
        `?hash=<it>` holds the read until the content hashes otherwise or
        `?wait` (default 5 minutes, jitter up to wait/16) runs out. A change of
        the topics that leaves the content as it was (another instance of the
        node) keeps it held. `?index` blocks as on any read, before that."""
        asked, lost = req.arg("hash"), req.connection_lost
        index = await self.block(req, topics)
        loop = asyncio.get_running_loop()
        # block() validated ?consistent and the rest: only the wait is wanted here
        deadline = loop.time() + self._jittered(decode.index_and_wait(req)[1])
        while True:
            response = self.answer(req, index, produce, cache=False)
            digest = hashlib.blake2b(response.body, digest_size=8).hexdigest()
            remaining = deadline - loop.time()
            if digest != asked or remaining <= 0 or (lost is not None and lost.done()):
                break
            await self.catalog.block(topics, index, remaining, lost)
            index = self.state.index_of(topics)
        response.headers.append((b"x-consul-contenthash", digest.encode()))
        return response

    async def agent_checks(self, req: Request, _: str) -> Response:
        # Not cached: it shows check output, which changes without a new index.
        # serfHealth is left out: in Consul it is a catalog check, not an agent one.
        keep = _selection(req, filter_fields.CHECK) or _everything
        return await self._read(
            req,
            (node_topic(self.local.name),),
            lambda: {
                c.check_id: row
                for c in self.state.checks_on_node(self.local.name)
                if c.check_id != SERF_CHECK_ID and keep(row := encode.check(c))
            },
            cache=False,
        )

    async def agent_self(self, req: Request, _: str) -> Response:
        return json(self.info.describe_self())

    async def agent_members(self, req: Request, _: str) -> Response:
        wan = req.has("wan") and req.arg("wan").lower() not in ("false", "0")
        return json(self.info.members(wan=wan))

    # -- catalog reads -----------------------------------------------------

    async def catalog_services(self, req: Request, _: str) -> Response:
        keep = _selection(req, filter_fields.CATALOG_SERVICE, "NodeMeta")
        if keep is None:
            return await self._read(req, (SERVICES,), self.state.service_tags)
        # Filtered: select instances (Consul's ServiceNode rows), then list names and tags.
        topics = (SERVICES, NODES) if req.has("node-meta") else (SERVICES,)
        return await self._read(req, topics, lambda: _names_and_tags(self._catalog_rows(keep)))

    def _catalog_rows(self, keep: Predicate) -> list[dict[str, Any]]:
        rows = (
            encode.catalog_service(self.state.node(s.node), s) for s in self.state.all_instances()
        )
        return [row for row in rows if keep(row)]

    async def catalog_service(self, req: Request, name: str) -> Response:
        return await self._read(req, *self.catalog_service_read(req, name))

    def catalog_service_read(self, req: Request, name: str) -> Read:
        """What `/v1/catalog/service/<name>` watches and how it answers."""
        tags = req.query.get("tag", [])
        keep = _selection(req, filter_fields.CATALOG_SERVICE, "NodeMeta") or _everything
        return (
            (service_topic(name),),
            lambda: [
                row
                for s in sorted(self.state.instances(name, tags), key=lambda s: (s.node, s.id))
                if keep(row := encode.catalog_service(self.state.node(s.node), s))
            ],
        )

    async def catalog_nodes(self, req: Request, _: str) -> Response:
        keep = _selection(req, filter_fields.NODE, "Meta") or _everything
        return await self._read(
            req,
            (NODES,),
            lambda: [row for n in self.state.all_nodes() if keep(row := encode.node(n))],
        )

    async def catalog_node(self, req: Request, name: str) -> Response:
        def produce() -> Any:
            node = self.state.node(name)
            if node is None:
                return None
            services = self.state.services_on(name)
            return {
                "Node": encode.node(node),
                "Services": {
                    sid: row
                    for sid, s in sorted(services.items())
                    if keep(row := encode.service(s))
                },
            }

        # Consul filters the node's services here, not the node.
        keep = _selection(req, filter_fields.SERVICE) or _everything

        return await self._read(req, (node_topic(name),), produce)

    async def datacenters(self, req: Request, _: str) -> Response:
        return json([self.info.datacenter])

    # -- health reads ------------------------------------------------------

    async def health_service(self, req: Request, name: str) -> Response:
        return await self._read(req, *self.health_service_read(req, name))

    def health_service_read(self, req: Request, name: str) -> Read:
        """What `/v1/health/service/<name>` watches and how it answers."""
        passing = decode.passing(req)
        tags = req.query.get("tag", [])
        keep = _selection(req, filter_fields.HEALTH_ROW, "Node.Meta")
        topics = (service_topic(name),)
        if keep is None:  # the hot path: nothing to test per row
            return topics, lambda: [
                encode.health_row(*row) for row in self.state.health(name, tags, passing)
            ]
        return topics, lambda: [
            encoded
            for row in self.state.health(name, tags, passing)
            if keep(encoded := encode.health_row(*row))
        ]

    async def health_checks(self, req: Request, name: str) -> Response:
        keep = self._check_selection(req)
        return await self._read(
            req,
            (service_topic(name),),
            lambda: [
                row for c in self.state.checks_for_service(name) if keep(row := encode.check(c))
            ],
        )

    def _check_selection(self, req: Request) -> Predicate:
        """`?filter=` over checks and `?node-meta=` over the checks' nodes."""
        by_filter = _selection(req, filter_fields.CHECK) or _everything
        wanted = _node_meta(req)
        if not wanted:
            return by_filter

        def keep(row: dict[str, Any]) -> bool:
            node = self.state.node(row["Node"])
            meta = node.meta if node is not None else {}
            return all(meta.get(k) == v for k, v in wanted) and by_filter(row)

        return keep

    async def health_state(self, req: Request, state: str) -> Response:
        if state != "any" and state not in STATUSES[:3]:
            raise ValidationError(f'Invalid state "{state}": use any, passing, warning or critical')
        keep = self._check_selection(req)
        return await self._read(
            req,
            (CHECKS, NODES) if req.has("node-meta") else (CHECKS,),
            lambda: [
                row for c in self.state.checks_in_state(state) if keep(row := encode.check(c))
            ],
        )

    async def health_node(self, req: Request, name: str) -> Response:
        keep = _selection(req, filter_fields.CHECK) or _everything
        return await self._read(
            req,
            (node_topic(name),),
            lambda: [row for c in self.state.checks_on_node(name) if keep(row := encode.check(c))],
        )

    async def status_leader(self, req: Request, _: str) -> Response:
        return json(self.info.leader_address())

    async def status_peers(self, req: Request, _: str) -> Response:
        return json([self.info.leader_address()])

    # -- agent writes ------------------------------------------------------

    async def service_register(self, req: Request, _: str) -> Response:
        reg = await decode.body_of(req, ServiceRegistration)
        replace = req.arg("replace-existing-checks").lower() in ("true", "1")
        await self.local.register_service(reg, replace)
        return empty()

    async def service_deregister(self, req: Request, service_id: str) -> Response:
        await self.local.deregister_service(service_id)
        return empty()

    async def service_maintenance(self, req: Request, service_id: str) -> Response:
        await self.local.service_maintenance(service_id, _enable_flag(req), req.arg("reason"))
        return empty()

    async def node_maintenance(self, req: Request, _: str) -> Response:
        await self.local.node_maintenance(_enable_flag(req), req.arg("reason"))
        return empty()

    async def check_register(self, req: Request, _: str) -> Response:
        await self.local.register_check(await decode.body_of(req, CheckRegistration))
        return empty()

    async def check_deregister(self, req: Request, check_id: str) -> Response:
        await self.local.deregister_check(check_id)
        return empty()

    async def check_pass(self, req: Request, check_id: str) -> Response:
        await self.local.heartbeat(check_id, "passing", req.arg("note"))
        return empty()

    async def check_warn(self, req: Request, check_id: str) -> Response:
        await self.local.heartbeat(check_id, "warning", req.arg("note"))
        return empty()

    async def check_fail(self, req: Request, check_id: str) -> Response:
        await self.local.heartbeat(check_id, "critical", req.arg("note"))
        return empty()

    async def check_update(self, req: Request, check_id: str) -> Response:
        update = await decode.body_of(req, CheckUpdate)
        await self.local.heartbeat(check_id, update.status, update.output)
        return empty()

    # -- catalog writes (third-party registration) --------------------------

    async def catalog_register(self, req: Request, _: str) -> Response:
        reg = await decode.body_of(req, CatalogRegistration)
        self.check_datacenter(req, reg.datacenter)
        await self.catalog.write(writes.catalog_register, reg, self.info.datacenter)
        service = (
            (reg.service.id or reg.service.name or reg.service.service) if reg.service else "-"
        )
        log.info("catalog registered: node=%s service=%s", reg.node, service)
        return json_bytes(_TRUE)

    async def catalog_deregister(self, req: Request, _: str) -> Response:
        reg = await decode.body_of(req, CatalogDeregistration)
        self.check_datacenter(req, reg.datacenter)
        await self.catalog.write(writes.catalog_deregister, reg)
        what = f"service={reg.serviceid}" if reg.serviceid else f"check={reg.checkid or '-'}"
        log.info("catalog deregistered: node=%s %s", reg.node, what)
        return json_bytes(_TRUE)


def _enable_flag(req: Request) -> bool:
    if not req.has("enable"):
        raise ValidationError("Missing value for enable")
    value = req.arg("enable").lower()
    if value not in ("true", "false"):
        raise ValidationError(f'Invalid value for enable: "{value}" (use true or false)')
    return value == "true"


def _everything(_: Any) -> bool:
    return True


def _selection(req: Request, shape: filter_fields.Record, node_meta: str = "") -> Predicate | None:
    """The rows a read keeps: `?filter=` compiled for `shape` (a 400 now, before
    any waiting, if it is invalid) and, where the endpoint takes it,
    `?node-meta=key:value` (repeatable) on the field path `node_meta` names.
    None when the request asks for neither: the read skips the test per row."""
    expression = req.arg("filter")
    by_filter = compile_filter(expression, shape) if expression else None
    wanted = _node_meta(req) if node_meta else []
    if not wanted:
        return by_filter
    path = node_meta.split(".")

    def keep(row: dict[str, Any]) -> bool:
        meta = row
        for part in path:
            meta = meta.get(part) or {}
        return all(meta.get(k) == v for k, v in wanted) and (by_filter is None or by_filter(row))

    return keep


def _node_meta(req: Request) -> list[tuple[str, str]]:
    """`?node-meta=rack:r1&node-meta=os:linux`: every pair must match (Consul's rule)."""
    pairs = []
    for item in req.query.get("node-meta", []):
        key, _, value = item.partition(":")
        if not key:
            raise ValidationError(f'Invalid node-meta "{item}": expected key:value')
        pairs.append((key, value))
    return pairs


def _names_and_tags(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """`/v1/catalog/services` from instance rows: each name with the union of its tags."""
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["ServiceName"], set()).update(row["ServiceTags"])
    return {name: sorted(found[name]) for name in sorted(found)}


def _query_key(req: Request) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The query without the blocking parameters and the token (the key holds
    the token's identity instead), as a cache key (`tag=a&tag=b` and `tag=a,b`
    are different questions)."""
    return tuple((k, tuple(v)) for k, v in sorted(req.query.items()) if k not in _NOT_KEYED)


_NOT_KEYED: Final = frozenset({"index", "wait", "token"})


class _Cached(NamedTuple):
    # The topics' index, State.outputs and the ACL generation it was filtered at.
    version: tuple[int, int, int]
    body: bytes
    filtered: bool
