"""Query names to lookups: which domain, which kind of thing, which one.

    <svc>.service[.<dc>].<domain>            instances of a service
    <tag>.<svc>.service[.<dc>].<domain>      ... with a tag
    _<svc>._<tag|tcp>.service[.<dc>].<domain> RFC 2782 form (`tcp`: no tag filter)
    <node>.node[.<dc>].<domain>              a node
    <hexip>.addr[.<dc>].<domain>             an address spelled in hex (8 or 32 digits)
    <domain>, ns.<domain>                    the apex (SOA, NS) and its name server
    <reversed ip>.in-addr.arpa, ....ip6.arpa  reverse lookups of known addresses (PTR)

Labels arrive lower-cased; matching is case-insensitive throughout.
"""

from __future__ import annotations

import ipaddress
from typing import Final, NamedTuple

APEX: Final = "apex"
NS_HOST: Final = "ns"
SERVICE: Final = "service"
NODE: Final = "node"
ADDR: Final = "addr"
UNKNOWN: Final = "unknown"  # inside a domain, but names nothing: NXDOMAIN
REVERSE: Final = "reverse"  # a PTR name; ours only if the address is in the catalog

_KINDS: Final = frozenset({b"service", b"node", b"addr", b"query"})


class Domain(NamedTuple):
    labels: tuple[bytes, ...]  # lower-cased, without the root
    wire: bytes
    text: str  # with the trailing dot


class Lookup(NamedTuple):
    kind: str
    domain: Domain
    name: str = ""  # service or node name
    tag: str = ""
    address: str = ""


def make_domain(text: str) -> Domain:
    labels = tuple(label.encode("idna").lower() for label in text.strip(".").split(".") if label)
    wire = b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\x00"
    return Domain(labels, wire, ".".join(lab.decode() for lab in labels) + ".")


def parse_name(
    labels: tuple[bytes, ...], domains: tuple[Domain, ...], datacenter: str
) -> Lookup | None:
    """The lookup a name asks for, or None when it is outside every domain."""
    domain = _match_domain(labels, domains)
    if domain is None:
        address = _reverse_address(labels)
        return Lookup(REVERSE, domains[0], address=address) if address else None
    rest = labels[: len(labels) - len(domain.labels)]
    if not rest:
        return Lookup(APEX, domain)
    if rest == (b"ns",):
        return Lookup(NS_HOST, domain)
    kind, rest = _split_kind(rest, datacenter.lower().encode())
    if kind == b"service":
        return _service(rest, domain)
    if kind == b"node" and rest:
        return Lookup(NODE, domain, name=_text(b".".join(rest)))
    if kind == b"addr" and len(rest) == 1:
        return _addr(rest[0], domain)
    return Lookup(UNKNOWN, domain)


def _match_domain(labels: tuple[bytes, ...], domains: tuple[Domain, ...]) -> Domain | None:
    best: Domain | None = None
    for domain in domains:
        n = len(domain.labels)
        matches = len(labels) >= n and labels[len(labels) - n :] == domain.labels
        if matches and (best is None or n > len(best.labels)):
            best = domain
    return best


def _split_kind(rest: tuple[bytes, ...], datacenter: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """(kind label, labels before it); kind is b"" when the name fits no form
    or names another datacenter (we federate with none: NXDOMAIN)."""
    if rest[-1] in _KINDS:
        return rest[-1], rest[:-1]
    if len(rest) >= 2 and rest[-2] in _KINDS:
        if rest[-1] != datacenter:
            return b"", ()
        return rest[-2], rest[:-2]
    return b"", ()


def _service(rest: tuple[bytes, ...], domain: Domain) -> Lookup:
    if len(rest) == 1:
        return Lookup(SERVICE, domain, name=_text(rest[0]))
    if len(rest) == 2:
        first, second = rest
        if first.startswith(b"_") and second.startswith(b"_"):
            tag = second[1:]
            return Lookup(
                SERVICE, domain, name=_text(first[1:]), tag="" if tag == b"tcp" else _text(tag)
            )
        return Lookup(SERVICE, domain, name=_text(second), tag=_text(first))
    return Lookup(UNKNOWN, domain)


def _addr(label: bytes, domain: Domain) -> Lookup:
    try:
        raw = bytes.fromhex(label.decode("ascii"))
    except ValueError:
        return Lookup(UNKNOWN, domain)
    if len(raw) == 4:
        return Lookup(ADDR, domain, address=str(ipaddress.IPv4Address(raw)))
    if len(raw) == 16:
        return Lookup(ADDR, domain, address=str(ipaddress.IPv6Address(raw)))
    return Lookup(UNKNOWN, domain)


def _text(label: bytes) -> str:
    return label.decode("utf-8", errors="replace")


def _reverse_address(labels: tuple[bytes, ...]) -> str:
    """The address a full in-addr.arpa / ip6.arpa name spells, else ""."""
    try:
        if len(labels) == 6 and labels[4:] == (b"in-addr", b"arpa"):
            octets = [int(label) for label in reversed(labels[:4])]
            return str(ipaddress.IPv4Address(bytes(octets)))
        if len(labels) == 34 and labels[32:] == (b"ip6", b"arpa"):
            nibbles = b"".join(reversed(labels[:32])).decode("ascii")
            return str(ipaddress.IPv6Address(bytes.fromhex(nibbles)))
    except ValueError:
        pass
    return ""
