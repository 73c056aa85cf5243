"""Shared pieces of the cluster-mode benchmarks: the etcd cluster, agents on it,
the machine line, and writing the "Cluster mode (etcd)" section of docs/benchmarks.md.

Everything runs on loopback: a real three-member etcd cluster (tests/etcd_cluster.py)
and real `waypost agent` processes. Run as `.venv/bin/python bench/etcd/<name>.py`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import etcd_cluster  # noqa: E402
from tests.agentproc import AgentProcess  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Cluster mode (etcd)"


@contextlib.contextmanager
def cluster() -> Iterator[etcd_cluster.EtcdCluster]:
    """The three-member loopback etcd cluster, stopped afterwards."""
    if not etcd_cluster.available():
        raise SystemExit(f"etcd is not installed at {etcd_cluster.ETCD}")
    try:
        yield etcd_cluster.acquire()
    finally:
        etcd_cluster.release()


@contextlib.contextmanager
def agents(
    etcd: etcd_cluster.EtcdCluster, *nodes: str, src: str | None = None
) -> Iterator[list[AgentProcess]]:
    """One `waypost agent --store etcd://...` per node name, sharing a fresh prefix.

    The agents run this tree's waypost package, or with `src` that of another
    checkout's `src/` (PYTHONPATH, so never whatever the virtualenv installed)."""
    url = etcd.url(f"/bench-{uuid.uuid4().hex[:8]}/")
    env = {"PYTHONPATH": str(Path(src).resolve() if src else ROOT / "src")}
    procs: list[AgentProcess] = []
    try:
        for node in nodes:
            args = ["--store", url, "--node", node, "--http", "127.0.0.1:0", "--dns", "off"]
            proc = AgentProcess(*args, "--log-level", "warning", env=env)
            if src and not _has_flag(src, "--grpc"):  # a tree from before the xDS server
                at = proc.args.index("--grpc")
                del proc.args[at : at + 2]
            procs.append(proc.start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _has_flag(src: str, flag: str) -> bool:
    """Whether the agent of another checkout's `src/` knows a command-line flag
    (looked for anywhere in its package: when unsure, assume it does)."""
    return any(f'"{flag}"' in path.read_text() for path in (Path(src) / "waypost").rglob("*.py"))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (q in 0..100)."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


median = statistics.median


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes `pids` so far (from /proc), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    etcd_version = subprocess.run(
        [etcd_cluster.ETCD, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    return (
        f"nproc {os.cpu_count()}, {model}, Python {platform.python_version()}, "
        f"{etcd_version} (3 members on loopback, default fsync), {platform.system()} "
        f"{platform.release()}"
    )


def write_result(key: str, text: str) -> None:
    """Replace the paragraph starting with `<!-- key -->` in our section (create as needed).

    Only what lies between `<!-- key -->` and `<!-- /key -->` is replaced: it holds
    the latest generated result alone. Hand-written reruns and their history go
    after the closing marker, where a new run cannot overwrite them."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = doc.find(SECTION)
    if start < 0:
        doc = doc.rstrip("\n") + f"\n\n{SECTION}\n\n"
        start = doc.find(SECTION)
    nxt = doc.find("\n## ", start + len(SECTION))
    end = len(doc) if nxt < 0 else nxt + 1
    body = doc[start + len(SECTION) : end]
    block = f"<!-- {key} -->\n{text.strip()}\n<!-- /{key} -->\n"
    pattern = re.compile(rf"<!-- {key} -->\n.*?<!-- /{key} -->\n", re.S)
    if pattern.search(body):
        body = pattern.sub(lambda _: block, body)
    else:
        body = body.rstrip("\n") + "\n\n" + block
    tail = "\n" + doc[end:] if nxt >= 0 else ""
    doc = doc[:start] + SECTION + "\n\n" + body.strip("\n") + "\n" + tail
    DOC.write_text(doc)
