"""Lookups to record sets, read from the catalog.

A `RecordSet` is what a name holds for one query type, already encoded:
each answer record with the additional records that go with it (an SRV's
target address), the records added regardless (a node's TXT), the rcode, and
the catalog topics it was read from, so the cache knows when to drop it.
Nothing here knows about packets, sizes or shuffling.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..catalog.model import Node, Service, carries
from ..catalog.watch import NODES, SERVICES, Topic, node_topic, service_topic
from . import names, wire
from .names import Lookup

if TYPE_CHECKING:
    from ..catalog.state import State

Answer = tuple[bytes, tuple[bytes, ...]]  # an answer record, its additional records

_UNHEALTHY = frozenset({"critical", "maintenance"})


class RecordSet(NamedTuple):
    rcode: int
    answers: tuple[Answer, ...] = ()
    extra: tuple[bytes, ...] = ()
    authority: bytes = b""
    topics: tuple[Topic, ...] = ()
    shuffle: bool = False


class Settings(NamedTuple):
    datacenter: str
    advertise: str
    only_passing: bool
    service_ttl: Callable[[str], int]
    node_ttl: int
    # With ACLs on: may the agent's default token read (resource, name)? None: yes.
    allow: Callable[[str, str], bool] | None = None


class Answerer:
    def __init__(self, state: State, settings: Settings) -> None:
        self.state = state
        self.settings = settings
        self._reverse_at = -1
        self._reverse_index: dict[str, list[str]] = {}

    def answer(self, lookup: Lookup, qtype: int) -> RecordSet:
        if lookup.kind == names.SERVICE:
            return self._service(lookup, qtype)
        if lookup.kind == names.NODE:
            return self._node(lookup, qtype)
        if lookup.kind == names.ADDR:
            return self._addr(lookup, qtype)
        if lookup.kind == names.APEX:
            return self._apex(lookup, qtype)
        if lookup.kind == names.NS_HOST:
            return self._ns_host(lookup, qtype)
        if lookup.kind == names.REVERSE:
            return self._reverse(lookup, qtype)
        return self._negative(lookup, wire.NXDOMAIN, ())

    # -- services -----------------------------------------------------------

    def _service(self, lookup: Lookup, qtype: int) -> RecordSet:
        found = self._service_names(lookup.name)
        topics = tuple(service_topic(n) for n in found)
        healthy = [(s, w) for n in found for s, w in self._healthy(n, lookup.tag)]
        if not healthy:
            return self._negative(lookup, wire.NXDOMAIN, (*topics, SERVICES))
        ttl = self.settings.service_ttl(healthy[0][0].name)
        answers: list[Answer] = []
        if qtype in (wire.A, wire.AAAA, wire.ANY):
            answers += self._instance_addresses(healthy, qtype, ttl)
        if qtype in (wire.SRV, wire.ANY):
            answers += [self._srv(s, w, ttl, lookup.domain) for s, w in healthy]
        if not answers:
            return self._negative(lookup, wire.NOERROR, topics)
        return RecordSet(wire.NOERROR, tuple(answers), topics=topics, shuffle=True)

    def _service_names(self, name: str) -> list[str]:
        """Registered names matching `name` case-insensitively (exact first)."""
        if self.state.has_service(name):
            return [name]
        return [n for n in self.state.service_names() if n.lower() == name]

    def _healthy(self, name: str, tag: str) -> list[tuple[Service, int]]:
        """Instances DNS may return, with their SRV weight for their status (and,
        with ACLs, only those the default token may read, service and node)."""
        allow = self.settings.allow
        if allow is not None and not allow("service", name):
            return []
        result = []
        for service in self.state.instances_of(name):
            if tag and not carries(service, tag):
                continue
            if allow is not None and not allow("node", service.node):
                continue
            status = self.state.aggregate_status(service)
            if status in _UNHEALTHY or (status == "warning" and self.settings.only_passing):
                continue
            weights = service.weights
            result.append((service, weights.passing if status == "passing" else weights.warning))
        return result

    def _address_of(self, service: Service) -> str:
        if service.address:
            return service.address
        node = self.state.node(service.node)
        return node.address if node is not None else ""

    def _instance_addresses(
        self, healthy: list[tuple[Service, int]], qtype: int, ttl: int
    ) -> list[Answer]:
        answers: list[Answer] = []
        seen: set[bytes] = set()
        for service, _ in healthy:
            parsed = wire.address_rdata(self._address_of(service))
            if parsed is None or (qtype != wire.ANY and parsed[0] != qtype) or parsed[1] in seen:
                continue
            seen.add(parsed[1])
            answers.append((wire.rr(wire.POINTER_TO_QUESTION, parsed[0], ttl, parsed[1]), ()))
        return answers

    def _srv(self, service: Service, weight: int, ttl: int, domain: names.Domain) -> Answer:
        target, additional = self._target(service, domain)
        rdata = wire.srv_rdata(1, weight, service.port, target)
        return wire.rr(wire.POINTER_TO_QUESTION, wire.SRV, ttl, rdata), additional

    def _target(self, service: Service, domain: names.Domain) -> tuple[bytes, tuple[bytes, ...]]:
        """Consul's SRV targets: the node's name when the instance uses the node's
        address, `<hexip>.addr` for an IP of its own, else the host name as is."""
        node = self.state.node(service.node)
        dc = self.settings.datacenter
        if not service.address or (node is not None and service.address == node.address):
            name = _safe_name(f"{service.node}.node.{dc}.{domain.text}")
            return name, self._node_additional(node, name)
        parsed = wire.address_rdata(service.address)
        if parsed is None:
            return _safe_name(service.address.rstrip(".") + "."), ()
        name = _safe_name(f"{parsed[1].hex()}.addr.{dc}.{domain.text}")
        ttl = self.settings.service_ttl(service.name)
        return name, (wire.rr(name, parsed[0], ttl, parsed[1]),)

    def _node_additional(self, node: Node | None, owner: bytes) -> tuple[bytes, ...]:
        if node is None or owner == b"\x00":
            return ()
        parsed = wire.address_rdata(node.address)
        records = [wire.rr(owner, parsed[0], self.settings.node_ttl, parsed[1])] if parsed else []
        records += self._node_txt(node, owner)
        return tuple(records)

    def _node_txt(self, node: Node, owner: bytes) -> list[bytes]:
        ttl = self.settings.node_ttl
        return [
            wire.rr(owner, wire.TXT, ttl, wire.txt_rdata(f"{k}={v}"))
            for k, v in sorted(node.meta.items())
        ]

    # -- nodes, addresses, the apex -------------------------------------------

    def _node(self, lookup: Lookup, qtype: int) -> RecordSet:
        node = self._find_node(lookup.name)
        if node is None:
            return self._negative(lookup, wire.NXDOMAIN, (node_topic(lookup.name), NODES))
        topics = (node_topic(node.name),)
        ttl = self.settings.node_ttl
        answers: list[Answer] = []
        parsed = wire.address_rdata(node.address)
        if parsed and qtype in (parsed[0], wire.ANY):
            answers.append((wire.rr(wire.POINTER_TO_QUESTION, parsed[0], ttl, parsed[1]), ()))
        txt = self._node_txt(node, wire.POINTER_TO_QUESTION)
        if qtype in (wire.TXT, wire.ANY):
            answers += [(record, ()) for record in txt]
        if not answers:
            return self._negative(lookup, wire.NOERROR, topics)
        extra = tuple(txt) if qtype in (wire.A, wire.AAAA) else ()
        return RecordSet(wire.NOERROR, tuple(answers), extra=extra, topics=topics)

    def _find_node(self, name: str) -> Node | None:
        node = self.state.node(name)
        if node is None:
            found = next((n for n in self.state.node_names() if n.lower() == name), None)
            node = None if found is None else self.state.node(found)
        allow = self.settings.allow
        if node is not None and allow is not None and not allow("node", node.name):
            return None  # as if it did not exist, as Consul answers
        return node

    def _addr(self, lookup: Lookup, qtype: int) -> RecordSet:
        rtype, rdata = wire.address_rdata(lookup.address) or (0, b"")
        if qtype not in (rtype, wire.ANY):
            return self._negative(lookup, wire.NOERROR, ())
        record = wire.rr(wire.POINTER_TO_QUESTION, rtype, self.settings.node_ttl, rdata)
        return RecordSet(wire.NOERROR, ((record, ()),))

    def _apex(self, lookup: Lookup, qtype: int) -> RecordSet:
        answers: list[Answer] = []
        if qtype in (wire.SOA, wire.ANY):
            answers.append((self._soa(lookup.domain, wire.POINTER_TO_QUESTION), ()))
        if qtype in (wire.NS, wire.ANY):
            ns_name = b"\x02ns" + lookup.domain.wire
            answers.append(
                (wire.rr(wire.POINTER_TO_QUESTION, wire.NS, 0, ns_name), self._ns_glue(ns_name))
            )
        if not answers:
            return self._negative(lookup, wire.NOERROR, ())
        return RecordSet(wire.NOERROR, tuple(answers))

    def _ns_host(self, lookup: Lookup, qtype: int) -> RecordSet:
        parsed = wire.address_rdata(self.settings.advertise)
        if parsed is None or qtype not in (parsed[0], wire.ANY):
            return self._negative(lookup, wire.NOERROR, ())
        record = wire.rr(wire.POINTER_TO_QUESTION, parsed[0], 0, parsed[1])
        return RecordSet(wire.NOERROR, ((record, ()),))

    def _ns_glue(self, owner: bytes) -> tuple[bytes, ...]:
        parsed = wire.address_rdata(self.settings.advertise)
        return (wire.rr(owner, parsed[0], 0, parsed[1]),) if parsed else ()

    def _soa(self, domain: names.Domain, owner: bytes) -> bytes:
        return wire.rr(owner, wire.SOA, 0, wire.soa_rdata(domain.wire, int(time.time())))

    # -- reverse lookups -----------------------------------------------------

    def forget_addresses(self) -> None:
        """Rebuild the reverse table on next use (what may be read changed)."""
        self._reverse_at = -1

    def knows_address(self, address: str) -> bool:
        """Whether a reverse lookup of `address` is ours to answer (else: forward or refuse)."""
        return address in self._addresses()

    def _addresses(self) -> dict[str, list[str]]:
        """Address -> names (`<node>.node.<dc>.` and `<svc>.service.<dc>.`), rebuilt
        when a node or an instance is written (health changes do not matter here)."""
        index = self.state.index_of((NODES, SERVICES))
        if index != self._reverse_at:
            table: dict[str, list[str]] = {}
            dc = self.settings.datacenter
            allow = self.settings.allow or _anything
            for node in self.state.all_nodes():
                if allow("node", node.name):
                    names_ = table.setdefault(_canonical(node.address), [])
                    names_.append(f"{node.name}.node.{dc}.")
            for service in self.state.all_instances():
                if service.address and allow("service", service.name):
                    names_ = table.setdefault(_canonical(service.address), [])
                    names_.append(f"{service.name}.service.{dc}.")
            self._reverse_index = {k: sorted(set(v)) for k, v in table.items() if k}
            self._reverse_at = index
        return self._reverse_index

    def _reverse(self, lookup: Lookup, qtype: int) -> RecordSet:
        found = self._addresses().get(lookup.address, [])
        topics = (NODES, SERVICES)
        if qtype not in (wire.PTR, wire.ANY):
            return RecordSet(wire.NOERROR, topics=topics)
        ttl = self.settings.node_ttl
        answers = tuple(
            (
                wire.rr(
                    wire.POINTER_TO_QUESTION, wire.PTR, ttl, _safe_name(n + lookup.domain.text)
                ),
                (),
            )
            for n in found
        )
        return RecordSet(wire.NOERROR if answers else wire.NXDOMAIN, answers, topics=topics)

    def _negative(self, lookup: Lookup, rcode: int, topics: tuple[Topic, ...]) -> RecordSet:
        """NXDOMAIN or NODATA, with the SOA in the authority section."""
        return RecordSet(
            rcode, authority=self._soa(lookup.domain, lookup.domain.wire), topics=topics
        )


def _anything(resource: str, name: str) -> bool:
    return True


def _safe_name(text: str) -> bytes:
    """A name's wire form; the root for a name DNS cannot carry (the record is then
    still useful for its port, and clients treat "." as "no target")."""
    try:
        return wire.name_wire(text)
    except ValueError:
        return b"\x00"


def _canonical(address: str) -> str:
    """An IP address in the form reverse names decode to; "" for a host name."""
    try:
        return str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        return ""
