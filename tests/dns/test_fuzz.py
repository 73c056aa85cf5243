"""Random and mutated packets against the real server, then a check it still answers right.

Each hostile packet is followed on the same socket by a well-formed probe
query; UDP packets are handled in order, so anything received before the
probe's answer is the server's reply to the hostile packet. No timeouts are
needed to detect silence, which keeps the test fast and deterministic.
"""

from __future__ import annotations

import contextlib
import socket
import struct

import dns.exception
import dns.message
import dns.query
import dns.rcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..agentproc import AgentProcess
from .conftest import answers, instance, query, register, set_check, wait_for

SEEDS = [
    dns.message.make_query("fuzz.service.consul", "A").to_wire(),
    dns.message.make_query("_fuzz._tcp.service.consul", "SRV", use_edns=0, payload=1232).to_wire(),
    dns.message.make_query("test-node.node.dc1.consul", "TXT").to_wire(),
    dns.message.make_query("consul", "ANY", use_edns=0).to_wire(),
]

_FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    packet = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "count"]))
        pos = draw(st.integers(0, max(0, len(packet) - 1)))
        if action == "flip" and packet:
            packet[pos] = draw(st.integers(0, 255))
        elif action == "cut":
            del packet[pos:]
        elif action == "insert":
            packet[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            field = draw(st.sampled_from([4, 6, 8, 10]))
            if len(packet) >= field + 2:
                packet[field : field + 2] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
    return bytes(packet)


hostile = st.one_of(st.binary(max_size=600), mutated())


class _Prober:
    def __init__(self, agent: AgentProcess) -> None:
        self.addr = (agent.dns_host, agent.dns_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.probe = dns.message.make_query("fuzz.service.consul", "A")

    def replies_to(self, packet: bytes) -> list[bytes]:
        """What the server sent back for `packet` (empty: silence)."""
        self.probe.id = (self.probe.id + 1) & 0xFFFF
        self.sock.sendto(packet, self.addr)
        self.sock.sendto(self.probe.to_wire(), self.addr)
        replies = []
        while True:
            data = self.sock.recv(65535)
            if data[:2] == self.probe.to_wire()[:2] and _is_probe_answer(data):
                return replies
            replies.append(data)


def _is_probe_answer(data: bytes) -> bool:
    try:
        msg = dns.message.from_wire(data)
    except Exception:
        return False
    return msg.question and msg.question[0].name.to_text() == "fuzz.service.consul."


def test_hostile_udp_packets(agent: AgentProcess) -> None:
    register(agent, instance("fuzz", 1, "10.66.0.1"))
    prober = _Prober(agent)

    @_FUZZ
    @given(packet=hostile)
    def throw(packet: bytes) -> None:
        for reply in prober.replies_to(packet):
            assert len(reply) >= 12 and reply[:2] == packet[:2], (packet, reply)
            assert reply[2] & 0x80, "a reply must be a response"
            assert len(packet) >= 12 and not packet[2] & 0x80, (
                "short packets and responses get silence"
            )

    try:
        throw()
    finally:
        prober.sock.close()
    _still_correct(agent)


def test_hostile_tcp_streams(agent: AgentProcess) -> None:
    register(agent, instance("fuzz", 1, "10.66.0.1"))

    @settings(max_examples=60, deadline=None)
    @given(chunks=st.lists(hostile, min_size=1, max_size=4))
    def throw(chunks: list[bytes]) -> None:
        with socket.create_connection((agent.dns_host, agent.dns_port), timeout=5) as sock:
            try:
                for chunk in chunks:
                    sock.sendall(struct.pack("!H", len(chunk)) + chunk)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65535):  # the server answers what it can, then closes
                    pass
            except (ConnectionResetError, BrokenPipeError, OSError) as exc:
                # the server closes a stream on a message that is not DNS at all
                assert not isinstance(exc, TimeoutError), "the server left the stream hanging"

    throw()
    _still_correct(agent)


def _still_correct(agent: AgentProcess) -> None:
    assert answers(query(agent, "fuzz.service.consul"), "A") == ["10.66.0.1"]
    assert answers(query(agent, "fuzz.service.consul", tcp=True), "A") == ["10.66.0.1"]
    assert query(agent, "nothing-here.service.consul").rcode() == dns.rcode.NXDOMAIN
    assert agent.proc is not None and agent.proc.poll() is None


def test_flood_degrades_latency_not_correctness(agent: AgentProcess, svc: str) -> None:
    """20,000 queries sent without reading a reply (many for names that miss the
    cache), a health change in the middle; then the answers must be exact."""
    register(agent, instance("fuzz", 1, "10.66.0.1"))
    register(agent, instance(svc, 1, "10.67.0.1"))
    register(agent, instance(svc, 2, "10.67.0.2"))
    packets = [
        dns.message.make_query(name, "A").to_wire()
        for name in (
            f"{svc}.service.consul",
            f"_{svc}._tcp.service.consul",
            "test-node.node.consul",
        )
    ]
    packets += [dns.message.make_query(f"r{n}.service.consul", "A").to_wire() for n in range(500)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for n in range(20_000):
            with contextlib.suppress(BlockingIOError):
                sock.sendto(packets[n % len(packets)], (agent.dns_host, agent.dns_port))
            if n == 10_000:
                set_check(agent, f"{svc}-2-ttl", "critical")
    # The flood may still fill the server's socket buffer: a query sent now can be
    # dropped by the kernel, as any UDP query under overload. Clients retry; so do we.
    first = wait_for(lambda: _udp_answer(agent, f"{svc}.service.consul"), bool)
    assert answers(first, "A") == ["10.67.0.1"]
    assert answers(query(agent, f"{svc}.service.consul", tcp=True), "A") == ["10.67.0.1"]
    _still_correct(agent)


def _udp_answer(agent: AgentProcess, name: str) -> dns.message.Message | None:
    try:
        return dns.query.udp(dns.message.make_query(name, "A"), agent.dns_host, 1.0, agent.dns_port)
    except dns.exception.Timeout:
        return None
