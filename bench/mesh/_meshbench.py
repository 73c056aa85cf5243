"""Shared pieces of the mesh benchmarks: an agent with its xDS server, Envoys, a
fast backend (HAProxy answering by itself), wrk runs parsed into figures.

Run them as `.venv/bin/python bench/mesh/<name>.py`. Everything is on loopback,
bounded in time, and stopped by the script.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT, ROOT / "bench" / "agent"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from _common import cpu_seconds, free_port, header, line, median, rss_mb  # noqa: E402
from tests.agentproc import AgentProcess  # noqa: E402
from tests.mesh.envoyproc import EnvoyProcess, agent_with_xds  # noqa: E402

__all__ = [
    "AgentProcess",
    "EnvoyProcess",
    "cpu_seconds",
    "free_port",
    "haproxy",
    "header",
    "line",
    "median",
    "mesh_agent",
    "rss_mb",
    "wrk",
]


@contextlib.contextmanager
def mesh_agent(*extra: str) -> Iterator[AgentProcess]:
    proc = agent_with_xds("bench", "--log-level", "warning", *extra).start()
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def haproxy(config: str) -> Iterator[None]:
    """HAProxy (the Debian package) with `config` appended to a one-thread global section."""
    text = (
        "global\n  nbthread 1\n  maxconn 4000\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        + config
    )
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as cfg:
        cfg.write(text)
        cfg.flush()
        proc = subprocess.Popen(
            ["haproxy", "-f", cfg.name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(
                f"haproxy exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(10)


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        line(f"unreadable wrk latency {text!r}")
        return float("nan")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(url: str, connections: int, seconds: int, host: str = "") -> dict[str, float]:
    """One wrk run (one thread): req/s, p50 and p99 latency in ms, errors."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if host:
        cmd += ["-H", f"Host: {host}"]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, timeout=seconds + 30
    ).stdout
    errors = 0.0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += float(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(float(g) for g in m.groups())
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(re.search(r"50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "errors": errors,
    }
