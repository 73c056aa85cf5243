"""The agent's DNS server: UDP and TCP on the agent's event loop.

Design
------
A query goes through three layers, each cheaper than the next one down:

1. **Raw hit** (UDP only). The bytes after the 2-byte ID are looked up as is
   in the cache's raw map. A repeat of a query seen before (same name
   spelling, type, flags, EDNS) goes straight to its cached entry: the
   response is `ID + header + the client's question + cached tail`. No
   parsing, no allocation beyond the join. This is the path dnsperf and
   real clients hit, and where the throughput comes from.
2. **Parsed hit**. Otherwise the query is parsed (wire.parse_query, by hand)
   and looked up by (lower-cased name, type, size limit, RD, EDNS). Case
   variants of a name (0x20 randomisation) share one entry; the client's
   own spelling of the question is spliced back in, and answer owner names
   are pointers to it, so the response echoes exactly what was asked.
3. **Miss**. The name is parsed into a lookup (names.py), the catalog read
   into a record set (answers.py), and an Entry built with its shuffled,
   truncated variants (cache.py). Entries die when the catalog reports a
   change to a topic they read (a service, a node), so a health change is
   visible in the very next answer.

Why not dnspython on the hot path: measured by bench/dns/microbench.py on a
10-instance service, `dns.message.from_wire` alone costs ~20 µs, and parsing,
responding and encoding a prebuilt answer with it ~130-260 µs per query (name
compression in `to_wire` dominates): a ceiling of a few thousand queries/s.
The raw path costs ~0.4 µs, a parsed hit ~5 µs, a miss 30-70 µs. dnspython
still encodes unusual names when entries are built, and talks to recursors.

Errors: every failure is an exception, and `wire.rcode_of` maps it to the
rcode in one place (FORMERR, NOTIMP, BADVERS, REFUSED; anything unexpected is
SERVFAIL and logged). Packets too short to carry an ID, and packets that are
themselves responses, get silence: answering them could feed a loop.

TCP: RFC 1035 length-prefixed messages, pipelined, answered in order for
local names; connections idle for `TCP_IDLE` seconds are closed, at most
`MAX_TCP` are open at once, and reading pauses while the client does not read
its answers (so a slow reader cannot grow our buffers).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .. import _duration
from .._exceptions import ConfigError, ValidationError
from ..catalog import Catalog
from ..catalog.acl import ACL
from ..catalog.state import State
from ..catalog.watch import Topic
from . import names, wire
from .answers import Answerer, Settings
from .cache import AnswerCache, Entry, response_flags
from .forward import Forwarder

log = logging.getLogger("waypost.dns")

TCP_IDLE: Final = 10.0
MAX_TCP: Final = 512
UDP_RCVBUF: Final = 4 << 20
_REFUSED_TYPES: Final = frozenset({251, 252, 253, 254})  # IXFR, AXFR, MAILB, MAILA
_FORWARD: Final = object()


@dataclass(frozen=True)
class DnsConfig:
    """The DNS settings as the flags give them; checked when a Responder is built.

    Attributes:
        datacenter: The datacenter names answer for (`web.service.dc1.consul`).
        advertise: The agent's address: the domain's name server (NS glue).
        domain: The DNS domain answered (`consul.`).
        alt_domain: A second domain answered the same way ("" for none).
        only_passing: Leave warning instances out too.
        service_ttl: Go-duration TTL by service name; `*` for the rest.
        node_ttl: Go-duration TTL of node records.
        recursors: `ADDR[:PORT]` to forward other names to (none: REFUSED).
        udp_max_size: UDP answers are cut (TC set) to this many bytes, whatever
            EDNS size the query offers: 1,232, the DNS flag day size, keeps an
            answer to a forged-source query from amplifying much.
        udp_answer_limit: Answer records in a UDP answer (Consul's
            `udp_answer_limit`), TC set when some were left out; 0: all that fit.
        a_record_limit: A/AAAA records in any answer (Consul's `a_record_limit`); 0: all.
        tcp_max_per_client: TCP connections one client address may hold; 0: no limit.
        allow: With ACLs on, what the agent's default token may read.
    """

    datacenter: str = "dc1"
    advertise: str = "127.0.0.1"
    domain: str = "consul."
    alt_domain: str = ""
    only_passing: bool = False
    service_ttl: Mapping[str, str] = field(default_factory=dict)
    node_ttl: str = "0s"
    recursors: Sequence[str] = ()
    udp_max_size: int = 1232
    udp_answer_limit: int = 0
    a_record_limit: int = 0
    tcp_max_per_client: int = 32
    allow: Callable[[str, str], bool] | None = None


class Responder:
    """Packets in, packets out: everything except the sockets."""

    def __init__(self, state: State, config: DnsConfig) -> None:
        domains = [config.domain] + ([config.alt_domain] if config.alt_domain else [])
        self.domains = tuple(names.make_domain(d) for d in domains)
        self.datacenter = config.datacenter
        self.forwarder = Forwarder(list(config.recursors))
        settings = Settings(
            datacenter=config.datacenter,
            advertise=config.advertise,
            only_passing=config.only_passing,
            service_ttl=_service_ttls(config.service_ttl),
            node_ttl=_ttl(config.node_ttl, "--dns-node-ttl"),
            allow=config.allow,
        )
        self.config = config
        self.answerer = Answerer(state, settings)
        self.cache = AnswerCache()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "queries",
                "raw_hits",
                "hits",
                "misses",
                "truncated",
                "errors",
                "dropped",
                "forwarded",
                "tcp_refused",
            ),
            0,
        )

    def respond(self, data: bytes, udp: bool) -> bytes | object | None:
        """The response to one packet (over UDP, fitted to the client's size; over
        TCP, up to 64 KiB); `_FORWARD` for the recursors; None for silence."""
        query: wire.Query | None = None
        try:
            query = wire.parse_query(data)
            return self._answer(data, query, udp)
        except wire.Silence:
            self.stats["dropped"] += 1
            return None
        except Exception as exc:
            if not isinstance(exc, wire.DnsError):
                log.exception("DNS query failed; answering SERVFAIL")
            self.stats["errors"] += 1
            return wire.error_response(data, wire.rcode_of(exc), query)

    def _answer(self, data: bytes, query: wire.Query, udp: bool) -> bytes | object:
        if query.qclass not in (wire.IN, wire.ANY) or query.qtype in _REFUSED_TYPES:
            raise wire.Refused
        if query.qtype == wire.OPT:
            raise wire.FormatError
        lookup = names.parse_name(query.labels, self.domains, self.datacenter)
        if lookup is not None and lookup.kind == names.REVERSE:
            lookup = lookup if self.answerer.knows_address(lookup.address) else None
        if lookup is None:
            if not self.forwarder or self.forwarder.busy():
                raise wire.Refused
            return _FORWARD
        entry = self._entry(query, lookup, udp)
        if udp:
            self.cache.remember_raw(data[2:], entry, query.qend)
        head, tail = entry.next()
        self.stats["truncated"] += bool(head[0] & 0x02)
        return data[:2] + head + data[12 : query.qend] + tail

    def _entry(self, query: wire.Query, lookup: names.Lookup, udp: bool) -> Entry:
        size = min(query.udp_limit(), self.config.udp_max_size) if udp else wire.MAX_TCP
        key = (query.qname, query.qtype, size, query.flags & wire.RD, query.edns is not None)
        entry = self.cache.entries.get(key)
        if entry is not None:
            self.stats["hits"] += 1
            return entry
        self.stats["misses"] += 1
        records = self.answerer.answer(lookup, query.qtype)
        flags = response_flags(query.flags & wire.RD, query.edns is not None, bool(self.forwarder))
        entry = Entry(key, records, flags, size, query.qend - 12, self._max_answers(query, udp))
        self.cache.put(entry)
        return entry

    def _max_answers(self, query: wire.Query, udp: bool) -> tuple[int, bool]:
        """How many answer records this query may get, and whether leaving
        some out sets TC (the UDP limit does: TCP carries the rest)."""
        limits: list[tuple[int, bool]] = []
        if udp and self.config.udp_answer_limit:
            limits.append((self.config.udp_answer_limit, True))
        if self.config.a_record_limit and query.qtype in (wire.A, wire.AAAA):
            limits.append((self.config.a_record_limit, False))
        return min(limits) if limits else (0, False)

    def acl_changed(self) -> None:
        """What the default token may read changed: forget every answer."""
        self.cache.clear()
        self.answerer.forget_addresses()

    async def forward(self, data: bytes, tcp: bool) -> bytes:
        self.stats["forwarded"] += 1
        limit = wire.MAX_TCP if tcp else wire.parse_query(data).udp_limit()
        return await self.forwarder.forward(data, tcp, limit)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.raw = responder.cache.raw
        self.stats = responder.stats
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The hot path: kept flat on purpose (see "Raw hit" above).
        self.stats["queries"] += 1
        hit = self.raw.get(data[2:])
        if hit is not None and hit[0].alive:
            self.stats["raw_hits"] += 1
            head, tail = hit[0].next()
            self.transport.sendto(data[:2] + head + data[12 : hit[1]] + tail, addr)  # type: ignore[union-attr]
            return
        response = self.responder.respond(data, udp=True)
        if response is _FORWARD:
            self._spawn(self._forward(data, addr))
        elif response is not None:
            self.transport.sendto(response, addr)  # type: ignore[arg-type, union-attr]

    async def _forward(self, data: bytes, addr: Any) -> None:
        response = await self.responder.forward(data, tcp=False)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(response, addr)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS UDP error: %s", exc)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.responder = server.responder
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.client: str | None = None  # counted against its address's limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.tcp_connections.add(self)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if len(self.server.tcp_connections) > MAX_TCP or not self.server.admit(client):
            self.server.responder.stats["tcp_refused"] += 1
            transport.close()
            return
        self.client = client
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.tcp_connections.discard(self)
        if self.client is not None:
            self.server.leave(self.client)
            self.client = None
        if self.idle is not None:
            self.idle.cancel()
        for task in self.tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        self._touch()
        self.buffer += data
        while len(self.buffer) >= 2 and self.transport is not None:
            if self.transport.is_closing():
                self.buffer.clear()
                return
            size = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + size:
                break
            message = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            self._handle(message)

    def _handle(self, message: bytes) -> None:
        self.responder.stats["queries"] += 1
        response = self.responder.respond(message, udp=False)
        if response is _FORWARD:
            task = asyncio.get_running_loop().create_task(self._forward(message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif response is not None:
            self._send(response)  # type: ignore[arg-type]
        elif self.transport is not None:
            self.transport.close()  # not a query at all: this stream is not DNS

    async def _forward(self, message: bytes) -> None:
        self._send(await self.responder.forward(message, tcp=True))

    def _send(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(response).to_bytes(2, "big") + response)

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        assert self.transport is not None
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE, self.transport.close)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


class DnsServer:
    """UDP and TCP listeners on one port, answering from the agent's catalog."""

    def __init__(self, catalog: Catalog, config: DnsConfig) -> None:
        self.responder = Responder(catalog.state, config)
        self.tcp_connections: set[_TcpProtocol] = set()
        self.tcp_per_client: dict[str, int] = {}
        self.tcp_limit = config.tcp_max_per_client
        self.address: tuple[str, int] = ("", 0)
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: _UdpProtocol | None = None
        self._tcp: asyncio.Server | None = None
        catalog.subscribe(self._changed)

    def _changed(self, topics: set[Topic], entries: object) -> None:
        if ACL in topics:  # the default token's view moved: every answer may differ
            self.responder.acl_changed()
        else:
            self.responder.cache.invalidate(topics)

    def admit(self, client: str) -> bool:
        """Count a TCP connection against its client's limit (False: over it).

        A client holding hundreds of idle connections used to lock every
        other TCP client out (MAX_TCP in all); now it locks out only itself."""
        count = self.tcp_per_client.get(client, 0)
        if self.tcp_limit and count >= self.tcp_limit:
            return False
        self.tcp_per_client[client] = count + 1
        return True

    def leave(self, client: str) -> None:
        count = self.tcp_per_client.get(client, 0) - 1
        if count > 0:
            self.tcp_per_client[client] = count
        else:
            self.tcp_per_client.pop(client, None)

    @classmethod
    async def start(cls, catalog: Catalog, config: DnsConfig, host: str, port: int) -> DnsServer:
        """Bind UDP and TCP on `host:port` (port 0: one free port for both).

        Raises:
            ConfigError: the address cannot be bound, or a DNS setting is invalid.
        """
        server = cls(catalog, config)
        for _ in range(20):
            try:
                await server._bind(host, port)
                return server
            except OSError as exc:
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    continue  # the UDP port was taken for TCP: pick again
                raise ConfigError(f"cannot serve DNS on {host}:{port}: {exc.strerror}") from exc
        raise ConfigError(f"cannot find a port free for both UDP and TCP on {host}")

    async def _bind(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = _udp_socket(host, port)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self.responder), sock=sock
        )
        bound = sock.getsockname()[1]
        try:
            self._tcp = await loop.create_server(
                lambda: _TcpProtocol(self), host, bound, reuse_address=True, backlog=1024
            )
        except OSError:
            transport.close()
            raise
        self._udp, self._udp_protocol = transport, protocol
        self.address = (host, bound)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for conn in list(self.tcp_connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self._tcp.wait_closed()
        if self._udp_protocol is not None:
            for task in list(self._udp_protocol.tasks):
                task.cancel()
        self.responder.cache.clear()

    def statistics(self) -> dict[str, float]:
        stats: dict[str, float] = dict(self.responder.stats)
        stats.update(self.responder.cache.statistics())
        stats["tcp_connections"] = len(self.tcp_connections)
        stats["forward_inflight"] = self.responder.forwarder.inflight
        stats["forward_failed"] = self.responder.forwarder.failed
        return stats


def _udp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _ttl(text: str, flag: str) -> int:
    try:
        seconds = _duration.parse(text, flag)
    except ValidationError as exc:
        raise ConfigError(str(exc)) from exc
    if seconds < 0:
        raise ConfigError(f"{flag} {text!r}: a TTL cannot be negative")
    return int(seconds)


def _service_ttls(table: Mapping[str, str]) -> Any:
    """A function from service name to TTL: exact name, then `*`, then 0."""
    ttls = {name: _ttl(value, f"--dns-service-ttl {name}") for name, value in table.items()}
    wildcard = ttls.pop("*", 0)

    def ttl_of(name: str) -> int:
        return ttls.get(name, wildcard)

    return ttl_of
