"""DNS ordering and A fallback (against a tiny real DNS server), hedge delays."""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from waypost import AsyncDiscovery, Discovery, RegistryUnavailable
from waypost.client._policy import ClientOptions, HedgePolicy, Latencies, ServiceState
from waypost.client._sources._dns import rfc2782_order


def test_rfc2782_priority_first_then_weighted() -> None:
    rng = random.Random(5)
    records = [(20, 1, "backup"), (10, 80, "big"), (10, 20, "small"), (10, 0, "zero")]
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        order = rfc2782_order(records, rng)
        assert order[-1] == "backup"
        assert sorted(order) == sorted(r[2] for r in records)
        firsts[order[0]] += 1
    assert firsts["big"] > 3 * firsts["small"] > 0
    assert firsts["zero"] < 100  # zero weight: picked first only when the draw is 0


class TinyDns:
    """A UDP DNS server answering A records only (no SRV): NXDOMAIN otherwise."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().lower()
            if question.rdtype == dns.rdatatype.A and name in self.answers:
                response.answer.append(
                    dns.rrset.from_text_list(name, 0, "IN", "A", self.answers[name])
                )
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), addr)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tiny_dns() -> Iterator[TinyDns]:
    server = TinyDns({"web.service.consul.": ["127.0.0.7", "127.0.0.8"]})
    yield server
    server.close()


async def test_dns_falls_back_to_a_records(tiny_dns: TinyDns) -> None:
    url = f"dns://127.0.0.1:{tiny_dns.port}?port=8080"
    async with AsyncDiscovery(url) as discovery:
        found = await discovery.instances("web")
        assert sorted((i.address, i.port) for i in found) == [
            ("127.0.0.7", 8080),
            ("127.0.0.8", 8080),
        ]
        assert await discovery.instances("other") == []
    with Discovery(url) as sync_discovery:
        assert len(sync_discovery.instances("web")) == 2


def test_dns_unreachable_raises() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # bound but never answers: timeout
    try:
        from waypost.client._sources._dns import DnsSource

        source = DnsSource("127.0.0.1", sock.getsockname()[1], timeout=0.3)
        with Discovery(source) as discovery, pytest.raises(RegistryUnavailable, match="DNS"):
            discovery.instances("web")
    finally:
        sock.close()


def test_latency_percentile_and_hedge_delay() -> None:
    latencies = Latencies()
    for k in range(1, 101):
        latencies.add(k / 1000)
    assert latencies.percentile(0.95) == pytest.approx(0.095)
    state = ServiceState("s", ClientOptions(hedge=HedgePolicy(percentile=0.5, min_samples=10)))
    assert state.hedge_delay() is None  # not enough samples yet
    for k in range(1, 21):
        state.latencies.add(k / 100)
    assert state.hedge_delay() == pytest.approx(0.10)
    fixed = ServiceState("s", ClientOptions(hedge=HedgePolicy(delay=0.02)))
    assert fixed.hedge_delay() == 0.02
    assert ServiceState("s", ClientOptions()).hedge_delay() is None
