"""Per-query cost of each layer of the DNS server, in process, no sockets.

Measures, for A and SRV on a 10-instance service:
- raw hit: the UDP hot path (raw-bytes lookup, variant, join);
- parsed hit: parse_query + normalized cache lookup + join (case variants);
- miss: parse + catalog read + encoding + variant building (cache cleared each time);
- dnspython: `dns.message.from_wire` alone, and from_wire + `make_response`
  + a prebuilt rrset + `to_wire`: what answering with dnspython would cost.

Usage: .venv/bin/python bench/dns/microbench.py
"""

from __future__ import annotations

import asyncio
import timeit

import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from waypost.catalog import Catalog, Node, Service
from waypost.dns.server import DnsConfig, Responder
from waypost.storage import open_storage


async def make_responder() -> Responder:
    catalog = Catalog(open_storage("memory://"))
    await catalog.open()
    await catalog.put(Node(name="bench", address="127.0.0.1"))
    services = [
        Service(node="bench", id=f"b{i}", name="bench", address=f"10.1.0.{i}", port=8000 + i)
        for i in range(1, 11)
    ]
    await catalog.put(*services)
    return Responder(catalog.state, DnsConfig())


def per_call_us(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def dnspython_rrset(name: str, rdtype: str) -> dns.rrset.RRset:
    """The answer as dnspython objects, built once (not part of the per-query cost)."""
    rrset = dns.rrset.RRset(
        dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
    )
    for i in range(1, 11):
        text = f"10.1.0.{i}" if rdtype == "A" else f"1 1 {8000 + i} 0a0100{i:02x}.addr.dc1.consul."
        rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rrset.rdtype, text))
    return rrset


def dnspython_answer(data: bytes, rrset: dns.rrset.RRset) -> bytes:
    """Answering with dnspython alone: parse, respond, encode (records prebuilt)."""
    query = dns.message.from_wire(data)
    response = dns.message.make_response(query)
    response.answer.append(rrset)
    return response.to_wire()  # type: ignore[no-any-return]


def dnspython_parse(data: bytes) -> object:
    return dns.message.from_wire(data)


def main() -> None:
    responder = asyncio.run(make_responder())
    names = {"A": "bench.service.consul", "SRV": "_bench._tcp.service.consul"}
    print(f"{'query':5} {'layer':20} {'µs/query':>9}")
    for rdtype, name in names.items():
        data = dns.message.make_query(name, rdtype).to_wire()
        upper = dns.message.make_query(name.upper(), rdtype).to_wire()
        responder.respond(data, udp=True)
        rrset = dnspython_rrset(name, rdtype)

        def raw_hit(data: bytes = data, raw: dict = responder.cache.raw) -> bytes:  # type: ignore[type-arg]
            entry, qend = raw[data[2:]]
            head, tail = entry.next()
            return data[:2] + head + data[12:qend] + tail

        def parsed_hit(upper: bytes = upper) -> object:
            return responder.respond(upper, udp=False)  # TCP: no raw map, parse every time

        def miss(data: bytes = data) -> object:
            responder.cache.clear()
            return responder.respond(data, udp=False)

        rows = {
            "raw hit": per_call_us(raw_hit, 200_000),
            "parsed hit": per_call_us(parsed_hit, 50_000),
            "miss": per_call_us(miss, 5_000),
            "dnspython parse only": per_call_us(lambda d=data: dnspython_parse(d), 20_000),
            "dnspython answer": per_call_us(lambda d=data, r=rrset: dnspython_answer(d, r), 10_000),
        }
        for layer, cost in rows.items():
            print(f"{rdtype:5} {layer:20} {cost:9.2f}")


if __name__ == "__main__":
    main()
