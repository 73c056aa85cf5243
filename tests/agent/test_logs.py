"""The agent's log lines answer "why is my service not in DNS?": registrations,
failing checks with their output, TTL expiries, reaps, maintenance and
deregistrations, at info; requests at debug; JSON for log shippers."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator

import pytest

from waypost.agent import logs
from waypost.api.agent import LogStream

from ..agentproc import AgentProcess
from ..wait import until


def _lines(agent: AgentProcess, pattern: str) -> list[str]:
    return [line for line in list(agent.output) if re.search(pattern, line)]


def test_info_logs_tell_what_happened_to_a_service() -> None:
    agent = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--log-level", "info"
    ).start()
    try:
        with agent.client() as http:
            dead = {
                "Name": "pay",
                "ID": "pay-1",
                "Port": 1,
                "Address": "127.0.0.1",
                "Check": {
                    "HTTP": "http://127.0.0.1:1/health",
                    "Interval": "1s",
                    "DeregisterCriticalServiceAfter": "1s",
                },
            }
            http.put("/v1/agent/service/register", json=dead).raise_for_status()
            ttl = {"Name": "beat", "ID": "beat-1", "Check": {"TTL": "1s", "Status": "passing"}}
            http.put("/v1/agent/service/register", json=ttl).raise_for_status()
            until(lambda: _lines(agent, r"reaping service: id=pay-1"), timeout=20)
            until(lambda: _lines(agent, r"check is now critical: check=service:beat-1"))
            http.put("/v1/agent/check/pass/service:beat-1?note=back").raise_for_status()
            http.put(
                "/v1/agent/service/maintenance/beat-1?enable=true&reason=new%20release"
            ).raise_for_status()
            http.put("/v1/agent/service/deregister/beat-1").raise_for_status()
            until(lambda: _lines(agent, r"deregistered service: id=beat-1"))
    finally:
        assert agent.stop() == 0
    log = "".join(agent.output)
    assert re.search(
        r"\[INFO\]  waypost\.agent: registered service: id=pay-1 name=pay "
        r"address=127\.0\.0\.1:1 checks=service:pay-1\(http, critical\)",
        log,
    )
    # The first result of a check that never passes, with its output, at once:
    assert re.search(
        r"\[WARN\]  waypost\.health: check is still critical: check=service:pay-1 "
        r'service=pay-1 was=critical output="HTTP GET http://127\.0\.0\.1:1/health: .*refused',
        log,
    )
    assert re.search(
        r"reaping service: id=pay-1 check=service:pay-1 critical for \d+s "
        r"\(DeregisterCriticalServiceAfter 1s\)",
        log,
    )
    assert "check TTL expired: check=service:beat-1 ttl=1s" in log
    assert (
        'check is now critical: check=service:beat-1 service=beat-1 was=passing output="TTL expired"'
        in log
    )
    assert (
        'check is now passing: check=service:beat-1 service=beat-1 was=critical output="back"'
        in log
    )
    assert 'service maintenance on: id=beat-1 reason="new release"' in log
    assert "waypost.http" not in log  # no access log at info


def test_debug_adds_the_access_log_and_json_lines_parse() -> None:
    agent = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--log-level", "debug", "--log-json"
    ).start()
    try:
        with agent.client() as http:
            http.get("/v1/health/service/web", params={"passing": "1"})
            until(lambda: _lines(agent, r"request: method=GET"))
    finally:
        assert agent.stop() == 0
    entries = [json.loads(line) for line in agent.output if line.startswith("{")]
    assert entries and all(
        set(e) >= {"@timestamp", "@level", "@module", "@message"} for e in entries
    )
    access = [e for e in entries if e["@module"] == "waypost.http"]
    assert access[0]["@level"] == "debug"
    assert re.match(
        r"request: method=GET url=/v1/health/service/web\?passing=1 status=200 "
        r"duration=[\d.]+ms from=127\.0\.0\.1$",
        access[0]["@message"],
    )


def test_monitor_streams_the_same_lines_as_the_log(agent: AgentProcess, unique: str) -> None:
    """`/v1/agent/monitor` (what `consul monitor` reads) shows the agent's own layout."""
    import threading

    import httpx

    lines: list[str] = []
    streaming = threading.Event()

    def read() -> None:
        with httpx.stream(
            "GET", f"{agent.http_url}/v1/agent/monitor?loglevel=info", timeout=10
        ) as r:
            streaming.set()  # subscribed in the step that sent the headers (nothing awaits between)
            for line in r.iter_lines():
                if unique in line:
                    lines.append(line)
                    return

    reader = threading.Thread(target=read)
    reader.start()
    assert streaming.wait(10), "the monitor sent no headers"
    httpx.put(f"{agent.http_url}/v1/agent/service/register", json={"Name": unique, "Port": 1})
    reader.join(10)
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z \[INFO\]  waypost\.agent: registered service: "
        rf"id={unique} name={unique} address=127\.0\.0\.1:1 checks=none",
        lines[0],
    ), lines


# -- the direct path for the lines logged at every write (agent/logs.py info) --


@pytest.fixture
def agent_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.TextIOWrapper]:
    """The agent's stderr logging on a line-buffered buffer, a fixed clock;
    the root logger's handlers (pytest's capture) put back afterwards."""
    root = logging.getLogger()
    kept, level = root.handlers[:], root.level
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", line_buffering=True)
    monkeypatch.setattr(time, "time", lambda: 1764583200.123)
    monkeypatch.setattr(time, "time_ns", lambda: 1764583200_123_000_000)
    try:
        yield stream
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in kept:
            root.addHandler(handler)
        root.setLevel(level)


def _setup(stream: io.TextIOWrapper, json_layout: bool = False) -> None:
    # sys.stderr set here, in the test's call: pytest's capture resets it between phases.
    real, sys.stderr = sys.stderr, stream
    try:
        logs.setup("info", json=json_layout)
    finally:
        sys.stderr = real


def _written(stream: io.TextIOWrapper) -> list[str]:
    return stream.buffer.getvalue().decode().splitlines()  # type: ignore[attr-defined]


@pytest.mark.parametrize("json_layout", [False, True])
def test_a_direct_line_is_the_line_logging_writes(
    agent_logging: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch, json_layout: bool
) -> None:
    _setup(agent_logging, json_layout)
    log = logging.getLogger("waypost.agent")
    records = []
    make = logging.Logger.makeRecord
    monkeypatch.setattr(
        logging.Logger, "makeRecord", lambda *a, **k: records.append(1) or make(*a, **k)
    )
    logs.info(log, "registered service: id=%s port=%d", "web-1", 80)
    assert not records, "the direct path built a LogRecord"
    log.info("registered service: id=%s port=%d", "web-1", 80)
    assert records
    direct, logged = _written(agent_logging)
    assert direct == logged
    assert "registered service: id=web-1 port=80" in direct


def test_another_handler_or_a_monitor_still_gets_the_record(
    agent_logging: io.TextIOWrapper,
) -> None:
    _setup(agent_logging)
    log = logging.getLogger("waypost.agent")
    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    capture = Capture(logging.INFO)
    log.addHandler(capture)
    logs.info(log, "deregistered service: id=%s", "a")
    log.removeHandler(capture)
    stream = LogStream()
    logging.getLogger().addHandler(stream)
    with stream.subscribe(logging.INFO) as queue:
        logs.info(log, "deregistered service: id=%s", "b")
        assert b"deregistered service: id=b" in queue.get_nowait()
    logs.info(log, "deregistered service: id=%s", "c")  # nobody listens: direct again
    assert seen == ["deregistered service: id=a"]
    assert [line[-1] for line in _written(agent_logging)] == ["a", "b", "c"]
