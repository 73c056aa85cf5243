"""A DNS fuzz soak: a million hostile packets at a real agent, then proof it is whole.

The suite's DNS fuzz (tests/dns/test_fuzz.py) sends a few hundred packets;
this sends a million, bounded in time, over UDP (and a share over TCP):
well-formed queries for random names and types, mutations of them (bits
flipped, bytes cut, counts and lengths lied about, compression loops), and
random bytes. Every 50,000 packets a probe query must get the right answer,
and at the end the agent must still be running, have logged no traceback
(an unexpected exception answers SERVFAIL and logs one), and its memory must
not have grown past a bound.

Usage: .venv/bin/python bench/dns/soak.py [--packets 1000000] [--max-seconds 900] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import struct
import sys
import time
from pathlib import Path

import dns.message
import dns.name
import dns.query
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "agent"))

from _common import header, line, rss_mb  # noqa: E402
from tests.agentproc import AgentProcess  # noqa: E402

TYPES = [1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 41, 65, 99, 251, 252, 255, 65535]
NAMES = [
    "web.service.consul", "_web._tcp.service.consul", "v1.web.service.consul", "big.service.consul",
    "meta-node.node.consul", "soak.node.dc1.consul", "0a000001.addr.consul", "consul", "ns.consul",
    "1.0.0.10.in-addr.arpa", "nope.service.consul", "example.com", "x.query.consul",
]  # fmt: skip


def seed_catalog(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as http:
        for n in range(50):
            body = {"Name": "big", "ID": f"big-{n}", "Address": f"10.1.{n // 250}.{n % 250 + 1}",
                    "Port": 8000 + n, "Tags": ["v1"]}  # fmt: skip
            http.put("/v1/agent/service/register", json=body).raise_for_status()
        web = {"Name": "web", "Address": "10.0.0.1", "Port": 80, "Tags": ["v1"]}
        http.put("/v1/agent/service/register", json=web).raise_for_status()
        meta = {f"k{i}": f"v{i}" for i in range(20)}
        node = {"Node": "meta-node", "Address": "10.0.0.1", "NodeMeta": meta}
        http.put("/v1/catalog/register", json=node).raise_for_status()


def query(rng: random.Random) -> bytes:
    name = dns.name.from_text(rng.choice(NAMES))
    if rng.random() < 0.3:  # odd bytes in extra labels (any byte may be in a label)
        extra = [rng.randbytes(rng.randint(1, 63)) for _ in range(rng.randint(1, 3))]
        name = dns.name.Name([*extra, *name.labels])
    edns = rng.random() < 0.5
    msg = dns.message.make_query(name, rng.choice(TYPES[:12]), use_edns=0 if edns else None,
                                 payload=rng.choice([512, 1232, 4096, 65535]))  # fmt: skip
    return msg.to_wire()


def mutate(rng: random.Random, packet: bytes) -> bytes:
    data = bytearray(packet)
    kind = rng.randrange(6)
    if kind == 0:  # flip bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # cut
        del data[rng.randrange(len(data)) :]
    elif kind == 2:  # lie about the counts
        data[4:12] = struct.pack("!HHHH", *(rng.randrange(65536) for _ in range(4)))
    elif kind == 3:  # a compression pointer to itself or past the end
        at = rng.randrange(12, max(13, len(data)))
        data[at : at + 2] = struct.pack("!H", 0xC000 | rng.choice([at, 12, 65535 & 0x3FFF]))
    elif kind == 4:  # a label length past the end
        data[12] = rng.choice([63, 64, 255])
    else:  # trailing garbage
        data += rng.randbytes(rng.randint(1, 300))
    return bytes(data)


def packet(rng: random.Random, templates: list[bytes]) -> bytes:
    roll = rng.random()
    if roll < 0.3:
        return query(rng)
    if roll < 0.85:
        return mutate(rng, rng.choice(templates))
    return rng.randbytes(rng.randint(0, 600))


def probe(host: str, port: int) -> None:
    msg = dns.message.make_query("web.service.consul", "A")
    answer = dns.query.udp(msg, host, port=port, timeout=5)
    addresses = [a.address for rrset in answer.answer for a in rrset]
    if addresses != ["10.0.0.1"]:
        raise SystemExit(f"probe failed: {addresses} ({answer.rcode()})")
    tcp = dns.query.tcp(
        dns.message.make_query("big.service.consul", "A"), host, port=port, timeout=5
    )
    if len([a for rrset in tcp.answer for a in rrset]) != 50:
        raise SystemExit("TCP probe failed: not 50 addresses")


def send_tcp(host: str, port: int, packets: list[bytes]) -> None:
    """A pipelined TCP connection carrying some of the hostile packets."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"".join(struct.pack("!H", len(p)) + p for p in packets))
            sock.settimeout(0.2)
            while sock.recv(65536):
                pass
    except OSError:
        pass  # the agent may close a stream it finds is not DNS: that is the point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    header(f"DNS soak: {args.packets:,} hostile packets (seed {args.seed})")
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node", "soak",
                        "--log-level", "warning").start()  # fmt: skip
    try:
        run(proc, rng, args.packets, args.max_seconds)
    finally:
        proc.stop()
    tracebacks = sum("Traceback" in text for text in proc.output)
    line(f"tracebacks in the agent's log: {tracebacks}")
    if tracebacks:
        raise SystemExit("".join(proc.output[-60:]))


def run(proc: AgentProcess, rng: random.Random, total: int, max_seconds: float) -> None:
    assert proc.proc is not None
    seed_catalog(proc.http_url)
    host, port = proc.dns_host, proc.dns_port
    templates = [query(rng) for _ in range(200)]
    rss_start = rss_mb(proc.proc.pid)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent = answered = 0
    started = time.monotonic()
    while sent < total and time.monotonic() - started < max_seconds:
        batch = [packet(rng, templates) for _ in range(500)]
        for data in batch:
            with contextlib.suppress(BlockingIOError):  # a full buffer drops it, as a network would
                sock.sendto(data, (host, port))
        sent += len(batch)
        answered += drain(sock)
        if sent % 10_000 == 0:
            send_tcp(host, port, batch[:50])
        if sent % 50_000 == 0:
            probe(host, port)
            rss = rss_mb(proc.proc.pid)
            line(f"{sent:>9,} sent  {answered:>9,} answered  agent RSS {rss:.0f} MB")
    elapsed = time.monotonic() - started
    probe(host, port)
    rss_end = rss_mb(proc.proc.pid)
    line(f"sent {sent:,} in {elapsed:.0f} s ({sent / elapsed:,.0f}/s), {answered:,} answers read")
    line(f"agent RSS {rss_start:.0f} MB -> {rss_end:.0f} MB; alive: {proc.proc.poll() is None}")
    if rss_end > rss_start + 200:
        raise SystemExit("the agent's memory grew by more than 200 MB")


def drain(sock: socket.socket) -> int:
    count = 0
    deadline = time.monotonic() + 0.02
    while time.monotonic() < deadline:
        try:
            sock.recv(65535)
            count += 1
        except BlockingIOError:
            time.sleep(0.001)
    return count


if __name__ == "__main__":
    main()
