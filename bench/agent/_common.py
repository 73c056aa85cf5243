"""Shared pieces of the agent benchmarks: agent and etcd processes, /proc readings,
medians and the machine description that goes next to every figure.

Every benchmark runs on loopback only, bounds its own time and stops what it
started. Run them as `.venv/bin/python bench/agent/<name>.py`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import agentproc  # noqa: E402, F401  (re-exported: scale.py sets its READY_TIMEOUT)
from tests.agentproc import AgentProcess  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ------------------------------------------------------------


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (children such as the agent inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def agent(store: str = "sqlite", *extra: str, prefix: Sequence[str] = ()) -> Iterator[AgentProcess]:
    """A `waypost agent` on 127.0.0.1:0 with its data in a fresh temp dir (same
    disk as /tmp); under `prefix` (valgrind) if given."""
    with tempfile.TemporaryDirectory(prefix="waypost-bench-") as tmp:
        args = ["--dev"] if store == "memory" else ["--data-dir", tmp]
        proc = AgentProcess(
            *args,
            "--http",
            "127.0.0.1:0",
            "--dns",
            "off",
            "--node",
            "n1",
            "--log-level",
            "warning",
            *extra,
            prefix=prefix,
        )
        proc.start()
        try:
            yield proc
        finally:
            proc.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def etcd() -> Iterator[tuple[str, int]]:
    """A single-node etcd from the system package on loopback, data in a temp dir.

    Yields its client URL and pid. Default settings (fsync on every commit, as waypost's
    sqlite store does)."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    with tempfile.TemporaryDirectory(prefix="waypost-bench-etcd-") as tmp:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        cmd = [
            binary,
            "--name",
            "bench",
            "--data-dir",
            f"{tmp}/data",
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"bench=http://127.0.0.1:{peer}",
            "--log-level",
            "error",
            "--logger",
            "zap",
        ]
        env = {**os.environ, "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            _wait_etcd(proc, url)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_etcd(proc: subprocess.Popen[bytes], url: str) -> None:
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"etcd exited ({proc.returncode}): {err[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("etcd did not become healthy within 20 s")


def copy_store(src: Path, dst: Path) -> None:
    """Copy a prepared store and fsync the copy: left dirty in the page cache,
    its 545 MB would be written back during the measurement (by the first
    checkpoint's fsync of the db file, or by the flusher 30 s later) and
    share the disk with the commits being timed."""
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- /proc readings -------------------------------------------------------


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` in MB (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat, to report noise."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


# -- reporting ------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def machine() -> str:
    """One line: cores, CPU model, RAM, Python, disk under /tmp."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return (
        f"{os.cpu_count()} cores ({model}), {mem_kb / 1024 / 1024:.1f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"tmp on {disk_of(tempfile.gettempdir())}"
    )


def disk_of(path: str) -> str:
    """The device and filesystem holding `path` (from /proc/mounts), e.g. '/dev/vda (ext4)'."""
    best = ("?", "?", "")
    real = os.path.realpath(path)
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mount, fstype = line.split()[:3]
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(
            best[2]
        ):
            best = (dev, fstype, mount)
    rotational = ""
    name = os.path.basename(best[0])
    flag = Path(f"/sys/block/{name}/queue/rotational")
    if flag.exists():
        rotational = ", rotational" if flag.read_text().strip() == "1" else ", non-rotational"
    return f"{best[0]} ({best[1]}{rotational})"


#: set in the copy of a script that `in_fresh_netns` runs: its namespace's name
NETNS_ENV = "WAYPOST_BENCH_NETNS"


def in_fresh_netns() -> None:
    """Run this script again in a network namespace of its own, then exit with its status.

    The host's loopback carries whatever netfilter rules the host has: a
    Docker daemon's, for one, stay after it stops, and with them connection
    tracking on every loopback packet, ~14% of each loopback `send()` (perf,
    docs/benchmarks.md section 3), the agent's and the floor server's alike
    (tests/examples started dockerd that way until session 23). A fresh namespace
    has a loopback and no rules, so the figure is the agent's and the
    kernel's, not another program's firewall. It needs root and iproute2's
    `ip`; without them the script runs where it is (its header says which).
    """
    if os.environ.get(NETNS_ENV) or os.geteuid() != 0 or shutil.which("ip") is None:
        return
    name = f"waypost-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        env = {**os.environ, NETNS_ENV: name}
        command = ["ip", "netns", "exec", name, sys.executable, *sys.argv]
        code = subprocess.call(command, env=env)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    sys.exit(code)


def network() -> str:
    """One line: which network namespace, and the netfilter rules in it."""
    where = os.environ.get(NETNS_ENV)
    place = f"a fresh namespace ({where})" if where else "the host's namespace"
    save = shutil.which("iptables-save")
    if save is None:
        return f"{place}, iptables not installed"
    dump = subprocess.run([save], capture_output=True, text=True, check=False).stdout
    rules = sum(1 for text in dump.splitlines() if text.startswith("-A "))
    return f"{place}, {rules} iptables rules"


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# machine: {machine()}")
    print(f"# network: {network()}")
    load = os.getloadavg()
    print(f"# load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    sys.stdout.flush()


def line(text: str) -> None:
    print(text, flush=True)
