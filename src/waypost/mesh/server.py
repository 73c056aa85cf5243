"""Envoy's Aggregated Discovery Service (state of the world) over grpcio.

One bidirectional stream per proxy. For each resource type the stream
remembers what the proxy subscribed to, the version and nonce last sent, and
the version it last accepted. The rules (Envoy's xDS protocol):

- A request whose `response_nonce` is not the last one sent is stale (the
  proxy had not seen the newer push yet) and is ignored.
- A request with `error_detail` is a NACK: the proxy rejected that version
  and keeps its last good config. It is logged with Envoy's own message and
  the version is *not* sent again, so there is no reject/resend loop; the
  next change in the catalog produces a new version, which is sent.
- Otherwise it is an ACK or a new subscription: the current resources are
  sent if their version differs from the last one sent.

Versions are content hashes over the resources a stream gets, so a catalog
change that does not touch a proxy's resources sends it nothing. Pushes are
driven by the catalog's change listener (the same one the DNS cache follows)
and by leaf renewals: a change marks every stream dirty once per event-loop
turn, each stream rebuilds (shared per node ID) and sends what changed, in
the order clusters, endpoints, listeners, routes, secrets.

With ACLs on, a stream is refused (PERMISSION_DENIED, naming the missing
permission) unless its `x-consul-token` may run the node (access.py); the
check runs when the first request names the node, before anything is sent,
and again before the next push after any ACL record changed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc  # type: ignore[import-untyped]
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format  # type: ignore[import-untyped]

from .._exceptions import AccessDenied, ConfigError, WaypostError
from ..catalog import Catalog
from ..catalog.watch import Topic
from ..storage import Entry
from . import _protos
from . import resources as r
from .access import TOKEN_METADATA, StreamGuard
from .encoding import Built, Encoder, with_nonce
from .snapshot import Translator

log = logging.getLogger("waypost.mesh")

WILDCARD_TYPES = (r.LISTENER, r.CLUSTER)  # an empty subscription means "all" (SotW)
_DIRTY = object()
_EOF = object()


@dataclass
class _Type:
    names: tuple[str, ...] = ()
    sent: str | None = None  # version last sent
    nonce: str = ""
    accepted: str = ""  # version last ACKed


@dataclass(eq=False)  # a stream is itself, hashed by identity (server.streams is a set)
class _Stream:
    node_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    types: dict[str, _Type] = field(default_factory=dict)
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    dirty: bool = False
    authorized_at: int = -1  # the ACL generation its token was last checked at


Address = tuple[str, int]


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self, catalog: Catalog, translator: Translator, guard: StreamGuard | None = None
    ) -> None:
        _protos.register()
        self.catalog = catalog
        self.translator = translator
        self.guard = guard  # None: ACLs are off
        self.refused = 0
        self.streams: set[_Stream] = set()
        self._per_node: collections.Counter[str] = collections.Counter()  # open streams by node
        self.generation = 0
        self.encoder = Encoder()  # shared by every node's snapshots (encoding.py)
        self._built: dict[str, tuple[int, Built]] = {}
        self._last_good: dict[str, Built] = {}
        self._scheduled = False
        self._nonces = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self.pushes = 0
        self.nacks = 0
        self.last_push = 0.0

    async def start(
        self, plain: Address | None, tls: tuple[Address, Any] | None = None
    ) -> tuple[int | None, int | None]:
        """Serve on the plain address and/or the TLS one (with its grpc server
        credentials); port 0 picks one. Returns the bound ports. Raises ConfigError."""
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers((self._handler(),))
        plain_port = self._bind("--grpc", plain, None) if plain else None
        tls_port = self._bind("--grpc-tls", tls[0], tls[1]) if tls else None
        await self._server.start()
        self.catalog.subscribe(self._changed)
        self.translator.leaves.subscribe(self.refresh)
        return plain_port, tls_port

    def _handler(self) -> Any:
        """ADS with responses sent as the bytes `_push` made (encoding.py): the
        generated registration would serialize each message again per stream.
        Delta xDS is not registered, so it answers UNIMPLEMENTED."""
        method = grpc.stream_stream_rpc_method_handler(
            self.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=bytes,  # already serialized
        )
        return grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {"StreamAggregatedResources": method},
        )

    def _bind(self, flag: str, address: Address, credentials: Any) -> int:
        assert self._server is not None
        host, port = address
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if credentials is None:
                bound = self._server.add_insecure_port(target)
            else:
                bound = self._server.add_secure_port(target, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"{flag}: cannot listen on {host}:{port}: {exc}") from exc
        if not bound:
            raise ConfigError(f"{flag}: cannot listen on {host}:{port} (in use?)")
        return int(bound)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)

    # -- what makes streams push ----------------------------------------------

    def _changed(self, topics: set[Topic], entries: list[Entry]) -> None:
        # The health runner releases a check's hold after every stored result,
        # which notifies with no topic at all: nothing changed, rebuild nothing.
        if topics:
            self.refresh()

    def refresh(self) -> None:
        """Mark every stream dirty, once per event-loop turn however many changes came."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._mark_dirty)

    def _mark_dirty(self) -> None:
        self._scheduled = False
        self.generation += 1
        for stream in self.streams:
            if not stream.dirty:
                stream.dirty = True
                stream.queue.put_nowait(_DIRTY)

    # -- the stream ---------------------------------------------------------------

    async def StreamAggregatedResources(  # the generated servicer names it
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> None:
        stream = _Stream()
        self.streams.add(stream)
        reader = asyncio.create_task(self._read(request_iterator, stream.queue))
        try:
            while (item := await stream.queue.get()) is not _EOF:
                if item is _DIRTY:
                    stream.dirty = False
                    if stream.node_id:
                        await self._authorize(stream, context)  # again if any ACL record changed
                    for type_url in r.PUSH_ORDER:
                        if type_url in stream.types:
                            await self._push(stream, type_url, context)
                else:
                    assert isinstance(item, discovery_pb2.DiscoveryRequest)
                    await self._request(stream, item, context)
        finally:
            self.streams.discard(stream)
            reader.cancel()
            self._forget(stream)

    @staticmethod
    async def _read(
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest], queue: asyncio.Queue[object]
    ) -> None:
        try:
            async for request in requests:
                queue.put_nowait(request)
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            queue.put_nowait(_EOF)

    async def _request(
        self, stream: _Stream, req: discovery_pb2.DiscoveryRequest, context: Any
    ) -> None:
        if not stream.node_id and req.node.id:
            stream.node_id = req.node.id
            self._per_node[stream.node_id] += 1
            stream.metadata = json_format.MessageToDict(req.node.metadata)
            await self._authorize(stream, context)
            log.info("xDS stream opened by %s", stream.node_id)
        state = stream.types.setdefault(req.type_url, _Type())
        if req.response_nonce and req.response_nonce != state.nonce:
            return  # an answer to an older push: the newer one is on its way
        state.names = tuple(sorted(req.resource_names))
        if req.HasField("error_detail"):
            self._nacked(stream, req, state)
            return
        state.accepted = req.version_info
        await self._push(stream, req.type_url, context)

    async def _authorize(self, stream: _Stream, context: Any) -> None:
        """Refuse the stream (the call ends here) unless its token may run the
        node: when it names its node, and again before a push once any ACL
        record changed (a token deleted or a policy narrowed closes the stream)."""
        if self.guard is None or stream.authorized_at == self.guard.generation():
            return
        token = next((v for k, v in context.invocation_metadata() or () if k == TOKEN_METADATA), "")
        try:
            self.guard.check(str(token), stream.node_id, stream.metadata)
            stream.authorized_at = self.guard.generation()
        except AccessDenied as exc:
            self.refused += 1
            log.warning("xDS stream of %s refused: %s", stream.node_id, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    def _nacked(self, stream: _Stream, req: discovery_pb2.DiscoveryRequest, state: _Type) -> None:
        self.nacks += 1
        log.warning(
            "xDS NACK from %s for %s version %s: %s; it keeps version %s, and this one is not "
            "sent again",
            stream.node_id,
            req.type_url.rsplit(".", 1)[-1],
            state.sent,
            " ".join(req.error_detail.message.split()),  # one line, whatever Envoy sent
            state.accepted or "(none)",
        )

    async def _push(self, stream: _Stream, type_url: str, context: Any) -> None:
        built = self._snapshot(stream)
        if built is None:
            return
        state = stream.types[type_url]
        names = self._names(built, type_url, state)
        version, base = built.response(type_url, names)  # made once per node, type and names
        if version == state.sent:
            return
        nonce = str(next(self._nonces))
        state.sent, state.nonce = version, nonce
        await context.write(with_nonce(base, nonce))
        self.pushes += 1
        self.last_push = time.time()

    @staticmethod
    def _names(built: Built, type_url: str, state: _Type) -> list[str]:
        have = built.snap.get(type_url, {})
        if type_url in WILDCARD_TYPES and (not state.names or "*" in state.names):
            return sorted(have)
        return [n for n in state.names if n in have]

    def _snapshot(self, stream: _Stream) -> Built | None:
        """The stream's node's resources at this generation (built once per
        node), or its last good ones if they cannot be built now."""
        cached = self._built.get(stream.node_id)
        if cached is not None and cached[0] == self.generation:
            return cached[1]
        try:
            built = Built(self.translator.build(stream.node_id, stream.metadata), self.encoder)
        except WaypostError as exc:
            log.warning("xDS: cannot configure %s: %s", stream.node_id or "(no node ID)", exc)
            return self._last_good.get(stream.node_id)
        self._built[stream.node_id] = (self.generation, built)
        self._last_good[stream.node_id] = built
        return built

    def _forget(self, stream: _Stream) -> None:
        """Drop a node's snapshots with its last stream (a count: 1,000 streams
        closing at once must not scan each other)."""
        if not stream.node_id:
            return
        self._per_node[stream.node_id] -= 1
        if self._per_node[stream.node_id] <= 0:
            del self._per_node[stream.node_id]
            self._built.pop(stream.node_id, None)
            self._last_good.pop(stream.node_id, None)

    def statistics(self) -> dict[str, float]:
        return {
            "xds_streams": len(self.streams),
            "xds_pushes": self.pushes,
            "xds_nacks": self.nacks,
            "xds_streams_refused": self.refused,
        }
