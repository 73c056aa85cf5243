"""The pure parts without a server: the query parser, name parsing, cache variants."""

from __future__ import annotations

import collections
import contextlib

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.dns import names, wire
from waypost.dns.answers import RecordSet
from waypost.dns.cache import AnswerCache, Entry, response_flags

CONSUL = names.make_domain("consul.")
ALT = names.make_domain("waypost")


def _labels(name: str) -> tuple[bytes, ...]:
    return tuple(label.encode() for label in name.lower().strip(".").split(".") if label)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("consul", ("apex", "", "")),
        ("ns.consul", ("ns", "", "")),
        ("web.service.consul", ("service", "web", "")),
        ("web.service.dc1.consul", ("service", "web", "")),
        ("v1.web.service.consul", ("service", "web", "v1")),
        ("_web._tcp.service.consul", ("service", "web", "")),
        ("_web._v1.service.dc1.consul", ("service", "web", "v1")),
        ("n1.node.consul", ("node", "n1", "")),
        ("a.b.c.service.consul", ("unknown", "", "")),
        ("web.service.dc2.consul", ("unknown", "", "")),
        ("foo.consul", ("unknown", "", "")),
        ("web.service.waypost", ("service", "web", "")),
    ],
)
def test_parse_name(name: str, expected: tuple[str, str, str]) -> None:
    lookup = names.parse_name(_labels(name), (CONSUL, ALT), "dc1")
    assert lookup is not None
    assert (lookup.kind, lookup.name, lookup.tag) == expected


def test_parse_name_outside_and_addr() -> None:
    assert names.parse_name(_labels("example.com"), (CONSUL,), "dc1") is None
    assert names.parse_name((), (CONSUL,), "dc1") is None
    lookup = names.parse_name(_labels("7f000001.addr.consul"), (CONSUL,), "dc1")
    assert lookup is not None and lookup.address == "127.0.0.1"


def test_parse_query_reads_question_and_edns() -> None:
    msg = dns.message.make_query("Web.Service.Consul", "SRV", use_edns=0, payload=1400)
    query = wire.parse_query(msg.to_wire())
    assert query.labels == (b"web", b"service", b"consul")
    assert (query.qtype, query.qclass, query.udp_limit()) == (wire.SRV, wire.IN, 1400)
    assert query.id == msg.id
    plain = wire.parse_query(dns.message.make_query("x.consul", "A").to_wire())
    assert plain.edns is None and plain.udp_limit() == 512


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_parse_query_only_raises_dns_errors(data: bytes) -> None:
    with contextlib.suppress(wire.DnsError):
        wire.parse_query(data)


def test_rcode_mapping_is_one_table() -> None:
    assert wire.rcode_of(wire.FormatError()) == wire.FORMERR
    assert wire.rcode_of(wire.Refused()) == wire.REFUSED
    assert wire.rcode_of(KeyError("boom")) == wire.SERVFAIL


def _records(n: int) -> RecordSet:
    answers = tuple(
        (wire.rr(wire.POINTER_TO_QUESTION, wire.A, 0, bytes([10, 0, 0, i])), ()) for i in range(n)
    )
    return RecordSet(wire.NOERROR, answers, shuffle=True)


def _first_record(entry: Entry) -> bytes:
    return entry.next()[1][12:16]  # the rdata of the first answer after its 12-byte head


def test_rotations_lead_evenly() -> None:
    entry = Entry("k", _records(5), response_flags(0, False, False), 512, 10)
    counts = collections.Counter(_first_record(entry) for _ in range(50))
    assert sorted(counts.values()) == [10] * 5


def test_many_records_are_redrawn_over_time() -> None:
    entry = Entry("k", _records(40), response_flags(0, False, False), 4096, 10)
    leaders = {_first_record(entry) for _ in range(4000)}
    assert len(leaders) > 30


def test_truncation_sets_tc_and_keeps_whole_records() -> None:
    entry = Entry("k", _records(50), response_flags(0, False, False), 512, 20)
    head, tail = entry.next()
    assert head[0] & 0x02  # TC
    count = int.from_bytes(head[4:6], "big")
    assert 12 + 20 + count * 16 <= 512 < 12 + 20 + (count + 1) * 16
    assert len(tail) == count * 16


def test_cache_drops_entries_by_topic() -> None:
    cache = AnswerCache()
    record = RecordSet(wire.NOERROR, _records(1).answers, topics=(("svc", "a"),))
    first = Entry("a", record, 0, 512, 10)
    cache.put(first)
    cache.invalidate([("svc", "b")])
    assert cache.entries.get("a") is first
    cache.invalidate([("svc", "a")])
    assert "a" not in cache.entries and not first.alive


def test_cache_budgets_keep_answers_from_a_flood_of_unknown_names() -> None:
    cache = AnswerCache(max_entries=2, max_negative=3)
    positive = RecordSet(wire.NOERROR, _records(1).answers)
    for key in ("x", "y", "z"):
        cache.put(Entry(key, positive, 0, 512, 10))
    assert list(cache.entries) == ["y", "z"]  # bounded, oldest out
    for n in range(100):  # random names: NXDOMAIN entries
        entry = Entry(f"nx{n}", RecordSet(wire.NXDOMAIN), 0, 512, 10)
        cache.put(entry)
        cache.remember_raw(f"raw{n}".encode(), entry, 12)
    assert {"y", "z"} <= set(cache.entries)
    assert len(cache.entries) == 5 and len(cache.raw) == 3
