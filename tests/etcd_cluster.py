"""A real three-member etcd cluster on loopback, for tests and benchmarks.

Members listen on three addresses of 127.0.0.0/8 (127.0.0.11-13 unless taken,
then the next free block), client port 2379 and peer port 2380 each, with
data directories under a temporary directory. Tests can `kill(i)` a member
with SIGKILL, `restart(i)` it on the same data, find the `leader()` and
`compact()` the history. Several conftests share one cluster per process
through `acquire()` / `release()`.

Only `/usr/bin/etcd` (or `$WAYPOST_ETCD`) is needed; `available()` says if it is there.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ETCD = os.environ.get("WAYPOST_ETCD", "/usr/bin/etcd")
CLIENT_PORT = 2379
PEER_PORT = 2380
START_TIMEOUT = 30.0


def available() -> bool:
    return os.access(ETCD, os.X_OK)


class Member:
    def __init__(self, name: str, host: str, data_dir: Path, log: Path) -> None:
        self.name = name
        self.host = host
        self.data_dir = data_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{CLIENT_PORT}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{PEER_PORT}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """Three etcd members on loopback; see the module docstring."""

    def __init__(self, base: Path, hosts: list[str], token: str) -> None:
        self.base = base
        self.token = token
        self.members = [
            Member(f"m{i}", host, base / f"m{i}.etcd", base / f"m{i}.log")
            for i, host in enumerate(hosts)
        ]

    # -- addresses -----------------------------------------------------------

    @property
    def endpoints(self) -> str:
        """`h1:2379,h2:2379,h3:2379`, as a store URL wants them."""
        return ",".join(m.endpoint for m in self.members)

    def url(self, prefix: str = "/waypost/", **options: str) -> str:
        query = "&".join([f"prefix={prefix}", *(f"{k}={v}" for k, v in options.items())])
        return f"etcd://{self.endpoints}?{query}"

    # -- life cycle ----------------------------------------------------------

    def start(self) -> EtcdCluster:
        for index in range(len(self.members)):
            self._spawn(index)
        self.wait_healthy()
        return self

    def _spawn(self, index: int) -> None:
        member = self.members[index]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        args = [
            ETCD,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
        ]
        with member.log.open("ab") as log:
            member.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, index: int) -> None:
        """SIGKILL one member (no goodbye to its peers or clients)."""
        member = self.members[index]
        if member.proc is not None and member.alive:
            member.proc.send_signal(signal.SIGKILL)
            member.proc.wait()

    def kill_all(self) -> None:
        for index in range(len(self.members)):
            self.kill(index)

    def restart(self, index: int) -> None:
        """Start a killed member again on its data directory."""
        if not self.members[index].alive:
            self._spawn(index)

    def heal(self) -> None:
        """Restart every dead member and wait until the cluster has a leader again."""
        for index in range(len(self.members)):
            self.restart(index)
        self.wait_healthy()

    def stop(self) -> None:
        """Stop every member and delete the data (safe to call twice)."""
        for member in self.members:
            if member.alive:
                assert member.proc is not None
                member.proc.terminate()
                try:
                    member.proc.wait(10)
                except subprocess.TimeoutExpired:
                    member.proc.kill()
                    member.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- queries -------------------------------------------------------------

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every live member reports healthy (it has a leader and answers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [m for m in self.members if m.alive]
            if live and all(_healthy(m) for m in live) and self.leader() is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd cluster not healthy within {timeout}s:\n{self.logs()}")

    def leader(self) -> int | None:
        """Index of the member that is leader now, or None if none is known."""
        for member in self.members:
            status = _status(member) if member.alive else None
            if status and status.get("leader"):
                leader_id = status["leader"]
                for index, other in enumerate(self.members):
                    other_status = _status(other) if other.alive else None
                    if other_status and other_status["header"]["member_id"] == leader_id:
                        return index
        return None

    def compact(self) -> int:
        """Compact the history up to the current revision; return that revision."""
        member = next(m for m in self.members if m.alive)
        with httpx.Client(base_url=member.client_url, timeout=10) as client:
            revision = int(
                client.post("/v3/kv/range", json={"key": "AA=="}).json()["header"]["revision"]
            )
            response = client.post(
                "/v3/kv/compaction", json={"revision": revision, "physical": True}
            )
            response.raise_for_status()
        return revision

    def logs(self) -> str:
        parts = []
        for member in self.members:
            with contextlib.suppress(OSError):
                tail = member.log.read_text(errors="replace")[-2000:]
                parts.append(f"--- {member.name} ({member.host}) ---\n{tail}")
        return "\n".join(parts)


def _healthy(member: Member) -> bool:
    try:
        response = httpx.get(f"{member.client_url}/health", timeout=2)
        return bool(response.status_code == 200 and response.json().get("health") == "true")
    except (httpx.HTTPError, ValueError):
        return False


def _status(member: Member) -> dict | None:  # type: ignore[type-arg]
    try:
        response = httpx.post(f"{member.client_url}/v3/maintenance/status", json={}, timeout=2)
        return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]
    except (httpx.HTTPError, ValueError):
        return None


def _free_hosts(count: int = 3) -> list[str]:
    """The first block of `count` loopback addresses whose etcd ports are free."""
    for first in range(11, 250, 10):
        hosts = [f"127.0.0.{first + i}" for i in range(count)]
        if all(_port_free(h, p) for h in hosts for p in (CLIENT_PORT, PEER_PORT)):
            return hosts
    raise RuntimeError("no free block of loopback addresses for a test etcd cluster")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_shared: EtcdCluster | None = None
_users = 0


def acquire() -> EtcdCluster:
    """The process-wide cluster, started on first use."""
    global _shared, _users
    if _shared is None:
        base = Path(tempfile.mkdtemp(prefix="waypost-etcd-"))
        _shared = EtcdCluster(base, _free_hosts(), token=base.name)
        atexit.register(_shared.stop)  # also when a run is interrupted
        _shared.start()
    _users += 1
    return _shared


def release() -> None:
    """Stop the shared cluster once its last user is done."""
    global _shared, _users
    _users -= 1
    if _users <= 0 and _shared is not None:
        _shared.stop()
        _shared = None
