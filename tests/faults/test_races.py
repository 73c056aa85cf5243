"""Races between writes to one instance, fired truly concurrently at a real agent.

Each test sets up PAIRS instances, then sends every pair's two requests at
once, all pairs in flight together (one burst written over connections opened
beforehand), so the sqlite group commit puts many of them in one batch. Any
request may succeed or be refused with a 4xx; only the final state is judged,
right away and after a restart on the same data dir. No failure is tolerated.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import NamedTuple

import httpx

from ..agentproc import AgentProcess
from .support import all_checks, ok, orphan_checks, service_ids_by_node, start_agent

PAIRS = 200
NODE = "n1"


class Request(NamedTuple):
    method: str
    path: str
    body: object = None


class Response(NamedTuple):
    status_code: int
    text: str


def _wire(request: Request) -> bytes:
    body = b"" if request.body is None else json.dumps(request.body).encode()
    head = (
        f"{request.method} {request.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def _burst(url: str, requests: list[Request]) -> list[Response]:
    """Send every request at once, each on a connection of its own opened beforehand.

    Plain asyncio streams rather than an HTTP client library: the connections
    are all open before the first byte of any request is written, and then all
    requests are written in one go, so they reach the agent within a few
    milliseconds of each other and land in the same group-commit batches.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conns = await asyncio.gather(*(asyncio.open_connection(host, int(port)) for _ in requests))
    try:
        payloads = [_wire(r) for r in requests]
        for (_, writer), payload in zip(conns, payloads, strict=True):
            writer.write(payload)
        await asyncio.gather(*(writer.drain() for _, writer in conns))

        async def answer(reader: asyncio.StreamReader) -> Response:
            raw = await asyncio.wait_for(reader.read(), timeout=60)  # to EOF: Connection: close
            head, _, body = raw.partition(b"\r\n\r\n")
            status_line = head.split(b"\r\n", 1)[0].split()
            assert len(status_line) >= 2, f"no HTTP answer: {raw[:200]!r}"
            return Response(int(status_line[1]), body.decode(errors="replace"))

        return list(await asyncio.gather(*(answer(reader) for reader, _ in conns)))
    finally:
        for _, writer in conns:
            writer.close()


def burst(url: str, pairs: list[tuple[Request, Request]], seed: int) -> list[tuple[int, int]]:
    """Fire all pairs together, in a shuffled order; return each pair's status codes."""
    order = [(n, side) for n in range(len(pairs)) for side in (0, 1)]
    random.Random(seed).shuffle(order)
    responses = asyncio.run(_burst(url, [pairs[n][side] for n, side in order]))
    codes: list[list[int]] = [[0, 0] for _ in pairs]
    for (n, side), response in zip(order, responses, strict=True):
        codes[n][side] = response.status_code
    return [(a, b) for a, b in codes]


def assert_2xx_or_4xx(codes: list[tuple[int, int]], what: tuple[str, str]) -> None:
    # 429 is a 4xx but no answer at all: the request never reached the core.
    bad = [
        (n, c) for n, pair in enumerate(codes) for c in pair if c // 100 not in (2, 4) or c == 429
    ]
    assert not bad, f"{what}: requests answered neither 2xx nor 4xx (pair, status): {bad[:10]}"


def outcome(codes: list[tuple[int, int]], what: tuple[str, str]) -> str:
    both = sum(1 for a, b in codes if a == 200 and b == 200)
    return (
        f"{len(codes)} pairs; {what[0]} succeeded in {sum(a == 200 for a, _ in codes)}, "
        f"{what[1]} in {sum(b == 200 for _, b in codes)}, both in {both}"
    )


def register_services(agent: AgentProcess, bodies: list[dict]) -> None:  # type: ignore[type-arg]
    requests = [Request("PUT", "/v1/agent/service/register", b) for b in bodies]
    responses = asyncio.run(_burst(agent.http_url, requests))
    for body, response in zip(bodies, responses, strict=True):
        ok(response, f"register {body['ID']}")


def write_conflicts(agent: AgentProcess) -> float:
    """How many plans the agent re-ran on a conflict (its /metrics): proof the race happened."""
    with agent.client() as http:
        text = ok(http.get("/metrics"), "GET /metrics").text
    values = [
        line.split()[-1]
        for line in text.splitlines()
        if line.startswith("waypost_catalog_write_conflicts ")
    ]
    assert values, "/metrics has no waypost_catalog_write_conflicts"
    return float(values[0])


def restart(agent: AgentProcess, data: Path) -> AgentProcess:
    assert agent.stop() == 0, "agent did not stop cleanly:\n" + "".join(agent.output)
    return start_agent(data, NODE, dns=False)


def test_check_registration_racing_service_deregistration_leaves_no_orphan_check(
    tmp_path: Path,
) -> None:
    agent = start_agent(tmp_path, NODE, dns=False)
    try:
        register_services(agent, [{"Name": "race-a", "ID": f"a-{n}"} for n in range(PAIRS)])

        def add_check(n: int) -> Request:
            body = {"CheckID": f"a-{n}-extra", "Name": "extra", "ServiceID": f"a-{n}", "TTL": "10m"}
            return Request("PUT", "/v1/agent/check/register", body)

        def drop_service(n: int) -> Request:
            return Request("PUT", f"/v1/agent/service/deregister/a-{n}")

        what = ("check register", "service deregister")
        codes = burst(agent.http_url, [(add_check(n), drop_service(n)) for n in range(PAIRS)], 1)
        assert_2xx_or_4xx(codes, what)
        assert write_conflicts(agent) > 0, "no request raced another: the test proves nothing"

        with agent.client() as http:
            orphans = orphan_checks(http)
        assert not orphans, (
            f"{len(orphans)} checks name a ServiceID that does not exist, right after the race "
            f"(node, check, service), e.g. {orphans[:5]} [{outcome(codes, what)}]"
        )
        agent = restart(agent, tmp_path)
        with agent.client() as http:
            orphans = orphan_checks(http)
        assert not orphans, (
            f"{len(orphans)} checks name a ServiceID that does not exist, after a restart "
            f"(node, check, service), e.g. {orphans[:5]} [{outcome(codes, what)}]"
        )
    finally:
        agent.kill()


def test_ttl_pass_racing_service_deregistration_never_brings_the_check_back(
    tmp_path: Path,
) -> None:
    agent = start_agent(tmp_path, NODE, dns=False)
    try:
        # Critical first, so that every pass is a status change: a write to race.
        register_services(
            agent,
            [
                {
                    "Name": "race-b",
                    "ID": f"b-{n}",
                    "Check": {"CheckID": f"b-{n}-ttl", "TTL": "10m", "Status": "critical"},
                }
                for n in range(PAIRS)
            ],
        )

        def heartbeat(n: int) -> Request:
            return Request("PUT", f"/v1/agent/check/pass/b-{n}-ttl")

        def drop_service(n: int) -> Request:
            return Request("PUT", f"/v1/agent/service/deregister/b-{n}")

        what = ("TTL pass", "service deregister")
        codes = burst(agent.http_url, [(heartbeat(n), drop_service(n)) for n in range(PAIRS)], 2)
        assert_2xx_or_4xx(codes, what)
        assert write_conflicts(agent) > 0, "no request raced another: the test proves nothing"
        gone = {n for n, (_, dereg) in enumerate(codes) if dereg == 200}

        def back(http: httpx.Client) -> list[str]:
            """Checks of acknowledged deregistrations that exist again, and services."""
            agent_checks = ok(http.get("/v1/agent/checks"), "GET /v1/agent/checks").json()
            catalog_checks = {c["CheckID"] for c in all_checks(http) if c["Node"] == NODE}
            services = {sid for node, sid in service_ids_by_node(http) if node == NODE}
            found = []
            for n in sorted(gone):
                if f"b-{n}-ttl" in agent_checks or f"b-{n}-ttl" in catalog_checks:
                    found.append(f"b-{n}-ttl")
                if f"b-{n}" in services:
                    found.append(f"b-{n}")
            return found

        with agent.client() as http:
            reappeared = back(http)
        assert not reappeared, (
            f"{len(reappeared)} checks/services reappeared after their deregistration was "
            f"acknowledged (both requests had returned), e.g. {reappeared[:5]} "
            f"[{outcome(codes, what)}]"
        )
        agent = restart(agent, tmp_path)
        with agent.client() as http:
            reappeared = back(http)
        assert not reappeared, (
            f"{len(reappeared)} checks/services of acknowledged deregistrations are back after "
            f"a restart, e.g. {reappeared[:5]} [{outcome(codes, what)}]"
        )
    finally:
        agent.kill()
