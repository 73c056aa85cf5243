"""DNS against hostile callers: amplification, TCP hoarding, the 17-variant bug."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from ..agentproc import AgentProcess
from .conftest import answers, instance, query, register


@pytest.fixture(scope="module")
def limited() -> Iterator[AgentProcess]:
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node", "limited",
        "--dns-udp-answer-limit", "3", "--dns-tcp-max-conns-per-client", "2",
    ).start()  # fmt: skip
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


@pytest.fixture(scope="module")
def own() -> Iterator[AgentProcess]:
    """An agent of this module's own, default settings: what these tests register
    (dozens of services) stays out of the session agent that other views list."""
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node", "hostile"
    ).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _fifty(agent: AgentProcess, svc: str) -> str:
    for n in range(1, 51):
        register(agent, instance(svc, n, f"10.20.0.{n}"))
    return svc


@pytest.fixture(scope="module")
def fifty(agent: AgentProcess) -> str:
    """Registered once: both queries of the test below only read it."""
    return _fifty(agent, "hostilefifty")  # no other test registers it (theirs are dns<N>)


@pytest.mark.parametrize("rdtype", ["ANY", "SRV"])
def test_udp_answers_are_capped_whatever_edns_offers(
    agent: AgentProcess, fifty: str, rdtype: str
) -> None:
    """With EDNS 4096 an ANY or SRV answer for 50 instances was 87 times the query."""
    name = f"{fifty}.service.consul"
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
    udp = dns.query.udp(q, agent.dns_host, port=agent.dns_port, timeout=5)
    size = len(udp.to_wire())
    assert size <= 1232 and udp.flags & dns.flags.TC
    assert size / len(q.to_wire()) < 40
    tcp = query(agent, name, rdtype, tcp=True)  # TCP carries the rest
    assert len(answers(tcp)) >= 50 and not tcp.flags & dns.flags.TC


def test_udp_answer_limit_counts_records_and_tcp_gets_them_all(
    limited: AgentProcess, svc: str
) -> None:
    for n in range(1, 11):
        register(limited, instance(svc, n, f"10.21.0.{n}"))
    udp = query(limited, f"{svc}.service.consul", "A", payload=1232)
    assert len(answers(udp, "A")) == 3 and udp.flags & dns.flags.TC
    assert len(answers(query(limited, f"{svc}.service.consul", "A", tcp=True), "A")) == 10


def _tcp(agent: AgentProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(
        (agent.dns_host, agent.dns_port), timeout=5, source_address=(source, 0)
    )


def _ask(sock: socket.socket, name: str) -> dns.message.Message | None:
    wire = dns.message.make_query(name, "A").to_wire()
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    head = sock.recv(2)
    if len(head) < 2:
        return None  # closed
    (size,) = struct.unpack("!H", head)
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return dns.message.from_wire(data)


def test_one_client_cannot_hoard_dns_tcp_connections(limited: AgentProcess) -> None:
    """600 idle connections from one client used to lock every TCP client out."""
    held = [_tcp(limited) for _ in range(2)]
    try:
        assert _ask(held[0], "limited.node.consul") is not None
        extra = _tcp(limited)
        assert extra.recv(10) == b""  # closed at once: over this client's limit
        extra.close()
        other = _tcp(limited, source="127.0.0.2")
        reply = _ask(other, "limited.node.consul")
        assert reply is not None and answers(reply, "A") == ["127.0.0.1"]
        other.close()
    finally:
        for sock in held:
            sock.close()


def test_a_node_with_many_meta_keys_answers_every_time(own: AgentProcess, svc: str) -> None:
    """17 or more TXT records used to answer once and then never again (the
    cache indexed a one-slot variant list modulo 16)."""
    meta = {f"k{i:02}": f"v{i}" for i in range(20)}
    body = {"Node": f"{svc}-node", "Address": "10.22.0.1", "NodeMeta": meta}
    with own.client() as http:
        assert http.put("/v1/catalog/register", json=body).status_code == 200
    for rdtype in ("TXT", "ANY", "TXT"):
        msg = query(own, f"{svc}-node.node.consul", rdtype, tcp=True)
        assert len(answers(msg, "TXT")) == 20, rdtype


def test_an_address_with_many_names_answers_every_time(own: AgentProcess, svc: str) -> None:
    for n in range(18):
        register(own, instance(f"{svc}x{n}", 1, "10.22.0.99"))
    for _ in range(3):
        msg = query(own, "99.0.22.10.in-addr.arpa", "PTR", tcp=True)
        assert len(answers(msg, "PTR")) >= 18
