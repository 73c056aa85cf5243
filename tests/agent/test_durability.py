"""Durability with a real agent process on the sqlite store: restarts and kill -9."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx

from ..agentproc import AgentProcess
from ..servers import HealthServer
from ..wait import until


def start(data: Path) -> AgentProcess:
    return AgentProcess(
        "--data-dir", str(data), "--http", "127.0.0.1:0", "--dns", "off", "--node", "n1"
    ).start()


def parked(agent: AgentProcess) -> float:
    """Blocking queries waiting in the agent (either path counts in this gauge)."""
    text = httpx.get(f"{agent.http_url}/metrics", timeout=5).text
    found = re.search(r"(?m)^waypost_catalog_parked_queries (\S+)$", text)
    assert found is not None, "no waypost_catalog_parked_queries on /metrics"
    return float(found.group(1))


def test_kill_9_loses_no_acknowledged_registration(tmp_path: Path) -> None:
    agent = start(tmp_path)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        with httpx.Client(base_url=agent.http_url, timeout=5) as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                sid = f"w{worker}-{n}"
                try:
                    r = http.put(
                        "/v1/agent/service/register", json={"Name": "crash", "ID": sid, "Port": n}
                    )
                except httpx.HTTPError:
                    return  # the agent died under us: this one was never acknowledged
                if r.status_code == 200:
                    with lock:
                        acknowledged.append(sid)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    until(lambda: len(acknowledged) >= 300, timeout=60)
    agent.kill()  # SIGKILL mid-stream
    stop.set()
    for t in threads:
        t.join(10)
    agent = start(tmp_path)
    try:
        with agent.client() as http:
            ids = {row["ServiceID"] for row in http.get("/v1/catalog/service/crash").json()}
        missing = set(acknowledged) - ids
        assert not missing, (
            f"{len(missing)} acknowledged registrations lost, e.g. {sorted(missing)[:5]}"
        )
        assert len(acknowledged) >= 300
    finally:
        agent.stop()


def test_restart_reloads_registrations_statuses_and_resumes_checks(tmp_path: Path) -> None:
    agent = start(tmp_path)
    with HealthServer() as server, agent.client() as http:
        http.put(
            "/v1/agent/service/register",
            json={"Name": "api", "ID": "api-1", "Check": {"CheckID": "ttl", "TTL": "5m"}},
        )
        http.put("/v1/agent/check/warn/ttl", params={"note": "degraded"})
        http.put(
            "/v1/agent/service/register",
            json={
                "Name": "web",
                "ID": "web-1",
                "Port": server.port,
                "Check": {"CheckID": "http", "HTTP": server.url, "Interval": "200ms"},
            },
        )
        until(lambda: http.get("/v1/agent/checks").json()["http"]["Status"] == "passing")
        index_before = int(http.get("/v1/catalog/services").headers["x-consul-index"])
        assert agent.stop() == 0

        agent = start(tmp_path)
        with agent.client() as http2:
            checks = http2.get("/v1/agent/checks").json()
            assert (checks["ttl"]["Status"], checks["ttl"]["Output"]) == ("warning", "degraded")
            assert checks["http"]["Status"] == "passing"
            assert int(http2.get("/v1/catalog/services").headers["x-consul-index"]) >= index_before
            server.status = 500  # the resumed HTTP check must notice
            until(lambda: http2.get("/v1/agent/checks").json()["http"]["Status"] == "critical")
            assert "500" in http2.get("/v1/agent/checks").json()["http"]["Output"]
        agent.stop()


def test_deregister_critical_service_after_with_a_real_agent(tmp_path: Path) -> None:
    agent = start(tmp_path)
    try:
        with agent.client() as http:
            http.put(
                "/v1/agent/service/register",
                json={
                    "Name": "doomed",
                    "ID": "doomed-1",
                    "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "1s"},
                },
            )
            started = time.monotonic()
            until(lambda: http.get("/v1/catalog/service/doomed").json() == [], timeout=15)
            assert time.monotonic() - started >= 1.0
    finally:
        agent.stop()


def test_sigterm_answers_open_blocking_queries_and_exits_cleanly(tmp_path: Path) -> None:
    agent = start(tmp_path)
    with agent.client() as http:
        index = http.get("/v1/health/service/web").headers["x-consul-index"]
    answers: list[int] = []

    def long_poll() -> None:
        with agent.client() as http:
            answers.append(
                http.get(
                    "/v1/health/service/web", params={"index": index, "wait": "10m"}
                ).status_code
            )

    pollers = [threading.Thread(target=long_poll, daemon=True) for _ in range(5)]
    for t in pollers:
        t.start()
    try:
        until(lambda: parked(agent) == 5, timeout=10)  # every query is waiting in the agent
    except BaseException:
        agent.kill()  # the pollers' queries end with it, not after their 10 minutes
        raise
    started = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - started < 5
    for t in pollers:
        t.join(5)
    assert answers == [200] * 5
