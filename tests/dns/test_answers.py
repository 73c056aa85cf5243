"""Health filtering, shuffling, NXDOMAIN vs NODATA, truncation and TCP, errors."""

from __future__ import annotations

import collections
import socket
import struct

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from ..agentproc import AgentProcess
from ..servers import recv_exactly
from .conftest import (
    answers,
    deregister,
    dig,
    instance,
    query,
    register,
    set_check,
    wait_for,
)


def _addresses(agent: AgentProcess, name: str) -> list[str]:
    return sorted(answers(query(agent, name), "A"))


def test_health_changes_show_in_the_next_answer(agent: AgentProcess, svc: str) -> None:
    for n in (1, 2, 3):
        register(agent, instance(svc, n, f"10.2.0.{n}"))
    name = f"{svc}.service.consul"
    assert _addresses(agent, name) == ["10.2.0.1", "10.2.0.2", "10.2.0.3"]  # now cached
    set_check(agent, f"{svc}-2-ttl", "critical")
    assert _addresses(agent, name) == ["10.2.0.1", "10.2.0.3"]
    set_check(agent, f"{svc}-3-ttl", "warning")  # warning instances stay by default
    assert _addresses(agent, name) == ["10.2.0.1", "10.2.0.3"]
    set_check(agent, f"{svc}-2-ttl", "passing")
    assert _addresses(agent, name) == ["10.2.0.1", "10.2.0.2", "10.2.0.3"]
    deregister(agent, f"{svc}-1")
    assert _addresses(agent, name) == ["10.2.0.2", "10.2.0.3"]


def test_no_healthy_instance_is_nxdomain_with_soa(agent: AgentProcess, svc: str) -> None:
    register(agent, instance(svc, 1, "10.3.0.1"))
    set_check(agent, f"{svc}-1-ttl", "critical")
    for rdtype in ("A", "SRV"):
        msg = query(agent, f"{svc}.service.consul", rdtype)
        assert msg.rcode() == dns.rcode.NXDOMAIN and not msg.answer
        assert msg.authority[0].rdtype == dns.rdatatype.SOA
        assert msg.authority[0].name.to_text() == "consul."


def test_warning_weight_and_only_passing(tuned_agent: AgentProcess, agent: AgentProcess) -> None:
    for proc in (agent, tuned_agent):
        register(proc, instance("weighted", 1, "10.4.0.1", Weights={"Passing": 5, "Warning": 2}))
        register(proc, instance("weighted", 2, "10.4.0.2"))
        set_check(proc, "weighted-1-ttl", "warning")
    srv = answers(query(agent, "_weighted._tcp.service.consul", "SRV"), "SRV")
    assert "1 2 8001 0a040001.addr.dc1.consul." in srv  # warning: the Warning weight
    assert _addresses(tuned_agent, "weighted.service.consul") == ["10.4.0.2"]  # only passing


def test_unknown_names_are_nxdomain_and_missing_types_nodata(agent: AgentProcess, svc: str) -> None:
    register(agent, instance(svc, 1, "10.5.0.1"))
    for name in (
        f"no-such-{svc}.service.consul",
        "no-such-node.node.consul",
        "a.b.c.service.consul",
        "whatever.consul",
        f"{svc}.service.dc9.consul",
        "x.query.consul",
    ):
        msg = query(agent, name)
        assert msg.rcode() == dns.rcode.NXDOMAIN, name
        assert msg.authority[0].rdtype == dns.rdatatype.SOA, name
    for name, rdtype in ((f"{svc}.service.consul", "TXT"), (f"{svc}.service.consul", "MX")):
        msg = query(agent, name, rdtype)
        assert msg.rcode() == dns.rcode.NOERROR and not msg.answer, (name, rdtype)
        assert msg.authority[0].rdtype == dns.rdatatype.SOA


def test_names_outside_the_domain_are_refused(agent: AgentProcess) -> None:
    for name in ("example.com", "consul.example.com", "."):
        msg = query(agent, name)
        assert msg.rcode() == dns.rcode.REFUSED, name
        assert not msg.flags & dns.flags.RA
    assert query(agent, "web.service.consul", "AXFR", tcp=True).rcode() == dns.rcode.REFUSED


def test_recursor_forwards_other_names(agent: AgentProcess, svc: str) -> None:
    """A second agent on domain `other.` forwards everything else to the first."""
    register(agent, instance(svc, 1, "10.6.0.1"))
    dns_addr = f"{agent.dns_host}:{agent.dns_port}"
    fwd = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node", "fwd",
        "--domain", "other.", "--recursor", dns_addr,
    ).start()  # fmt: skip
    try:
        msg = query(fwd, f"{svc}.service.consul")
        assert answers(msg, "A") == ["10.6.0.1"]
        assert answers(query(fwd, f"{svc}.service.consul", tcp=True), "A") == ["10.6.0.1"]
        assert query(fwd, "example.com").rcode() == dns.rcode.REFUSED  # the first agent's answer
        assert answers(query(fwd, "fwd.node.other"), "A") == ["127.0.0.1"]
        assert query(fwd, "fwd.node.other").flags & dns.flags.RA
    finally:
        assert fwd.stop() == 0


def test_answers_are_shuffled_evenly(agent: AgentProcess, svc: str) -> None:
    for n in range(1, 6):
        register(agent, instance(svc, n, f"10.7.0.{n}"))
    first = collections.Counter(
        answers(query(agent, f"{svc}.service.consul"), "A")[0] for _ in range(200)
    )
    assert set(first) == {f"10.7.0.{n}" for n in range(1, 6)}
    assert min(first.values()) >= 20, first  # rotations: every instance leads about 40 times


@pytest.fixture(scope="module")
def fifty(agent: AgentProcess) -> str:
    """Fifty instances of one service, registered once for the module: the
    tests that use it only query it (registering them per test cost 2-3 s each)."""
    name = "dnsfifty"  # no other test registers it (their names are dns<N>)
    for n in range(1, 51):
        register(agent, instance(name, n, f"10.8.0.{n}"))
    return name


def test_udp_truncates_to_512_and_tcp_carries_everything(agent: AgentProcess, fifty: str) -> None:
    name = f"_{fifty}._tcp.service.consul"
    udp = query(agent, name, "SRV")
    assert udp.flags & dns.flags.TC
    assert 0 < len(answers(udp, "SRV")) < 50
    assert len(udp.to_wire()) <= 512
    tcp = query(agent, name, "SRV", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(answers(tcp, "SRV")) == 50
    assert len({rrset.name for rrset in tcp.additional}) == 50
    a_tcp = query(agent, f"{fifty}.service.consul", "A", tcp=True)
    assert len(answers(a_tcp, "A")) == 50


def test_edns_buffer_size_is_honoured(agent: AgentProcess, fifty: str) -> None:
    name = f"{fifty}.service.consul"
    small = query(agent, name, "A")  # 512 bytes: 50 A records (16 bytes each) do not fit
    assert small.flags & dns.flags.TC
    big = query(agent, name, "A", payload=1232)
    assert not big.flags & dns.flags.TC and len(answers(big, "A")) == 50
    srv = query(agent, f"_{fifty}._tcp.service.consul", "SRV", payload=1232)
    assert srv.flags & dns.flags.TC and len(srv.to_wire()) <= 1232
    assert len(answers(srv, "SRV")) > len(
        answers(query(agent, name.replace(fifty, f"_{fifty}._tcp"), "SRV"), "SRV")
    )


def test_dig_retries_over_tcp_after_tc(agent: AgentProcess, fifty: str) -> None:
    out = dig(
        agent, f"_{fifty}._tcp.service.consul", "SRV", "+noedns", "+noall", "+answer", "+comments"
    )
    assert "Truncated, retrying in TCP mode" in out or out.count("IN\tSRV") == 50
    assert out.count("IN\tSRV") == 50
    ignored = dig(agent, f"_{fifty}._tcp.service.consul", "SRV", "+noedns", "+ignore", "+comments")
    assert " tc" in ignored.split("flags:")[1].split(";")[0]


def _raw_udp(agent: AgentProcess, packet: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (agent.dns_host, agent.dns_port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def test_malformed_packets_get_formerr_or_silence(agent: AgentProcess) -> None:
    good = dns.message.make_query("test-node.node.consul", "A").to_wire()
    assert _raw_udp(agent, b"\x12") is None  # shorter than a header
    reply = dns.message.from_wire(good)
    reply.flags |= dns.flags.QR
    assert _raw_udp(agent, reply.to_wire()) is None  # a response: never answered
    cut = _raw_udp(agent, good[:20])
    assert cut is not None and cut[:2] == good[:2] and cut[3] & 0xF == dns.rcode.FORMERR
    two_questions = good[:4] + b"\x00\x02" + good[6:]
    bad = _raw_udp(agent, two_questions)
    assert bad is not None and bad[3] & 0xF == dns.rcode.FORMERR
    notify = good[:2] + bytes([good[2] | (4 << 3)]) + good[3:]
    bad = _raw_udp(agent, notify)
    assert bad is not None and bad[3] & 0xF == dns.rcode.NOTIMP


def test_unknown_edns_version_is_badvers(agent: AgentProcess) -> None:
    msg = dns.message.make_query("test-node.node.consul", "A", use_edns=1)
    raw = _raw_udp(agent, msg.to_wire())
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert reply.rcode() == dns.rcode.BADVERS


def test_tcp_pipelining_and_garbage(agent: AgentProcess) -> None:
    queries = [dns.message.make_query(n, "A") for n in ("test-node.node.consul", "ns.consul")]
    with socket.create_connection((agent.dns_host, agent.dns_port), timeout=5) as sock:
        sock.sendall(
            b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries))
        )
        for q in queries:
            (size,) = struct.unpack("!H", recv_exactly(sock, 2))
            reply = dns.message.from_wire(recv_exactly(sock, size))
            assert reply.id == q.id and reply.answer
        garbage = b"\x12\x34" + b"\x00\x00\x00\x01" + b"\x00" * 6 + b"\x3fhello"
        sock.sendall(struct.pack("!H", len(garbage)) + garbage)
        (size,) = struct.unpack("!H", recv_exactly(sock, 2))
        assert recv_exactly(sock, size)[3] & 0xF == dns.rcode.FORMERR
        sock.sendall(b"\x00\x05hello")  # not even a header: the stream is closed
        assert sock.recv(10) == b""
    assert answers(query(agent, "ns.consul", tcp=True), "A") == ["127.0.0.1"]


def test_statistics_are_exposed(agent: AgentProcess) -> None:
    query(agent, "test-node.node.consul")
    with agent.client() as http:
        stats = wait_for(lambda: http.get("/v1/agent/self").json()["Stats"], lambda s: "dns" in s)
    assert float(stats["dns"]["queries"]) > 0


def test_mixed_case_service_names_match_and_invalidate(agent: AgentProcess, svc: str) -> None:
    name = svc.upper() + "Mixed"
    register(agent, instance(name, 1, "10.9.9.1"))
    assert _addresses(agent, f"{name.lower()}.service.consul") == ["10.9.9.1"]
    set_check(agent, f"{name}-1-ttl", "critical")
    assert query(agent, f"{name}.service.consul").rcode() == dns.rcode.NXDOMAIN
