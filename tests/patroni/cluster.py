"""Real Patroni members with real PostgreSQL servers, using a waypost agent as their Consul.

Debian's `patroni` (with python3-consul) and `postgresql` packages; each member
is a `patroni` process running as the `postgres` user (PostgreSQL refuses
root) with its own data dir, PostgreSQL port and REST API port, all on
loopback. Timings are tuned down (ttl 6 s, loop_wait 1 s) so that a failover
takes seconds; every process this module starts is stopped by `close()`,
PostgreSQL servers that outlived a killed Patroni included.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from ..servers import free_port

PATRONI = "/usr/bin/patroni"
PG_BIN = Path("/usr/lib/postgresql")
TTL = 6  # Patroni's leader TTL: its Consul session gets TTL/2, Consul doubles it
LOOP_WAIT = 1
RETRY_TIMEOUT = 2


def pg_bin_dir() -> Path | None:
    versions = sorted(PG_BIN.glob("*/bin/initdb")) if PG_BIN.is_dir() else []
    return versions[-1].parent if versions else None


def available() -> str:
    """Why the Patroni tests cannot run here, or "" if they can."""
    if not Path(PATRONI).exists():
        return f"{PATRONI} is missing (apt-get install patroni python3-consul)"
    if pg_bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run PostgreSQL as"
    return ""


class Member:
    def __init__(self, name: str, root: Path, consul_port: int, scope: str) -> None:
        self.name = name
        self.dir = root / name
        self.data = self.dir / "data"
        self.pg_port = free_port()
        self.api_port = free_port()
        self.log = self.dir / "patroni.log"
        self.config = self.dir / "patroni.yml"
        self.dir.mkdir(parents=True)
        self.config.write_text(json.dumps(self._settings(consul_port, scope, root)))
        self.proc: subprocess.Popen[bytes] | None = None

    def _settings(self, consul_port: int, scope: str, root: Path) -> dict[str, object]:
        return {
            "scope": scope,
            "name": self.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{self.api_port}",
                "connect_address": f"127.0.0.1:{self.api_port}",
            },
            "consul": {"host": f"127.0.0.1:{consul_port}", "register_service": False},
            "bootstrap": {
                "dcs": {"ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT},
                "initdb": [{"encoding": "UTF8"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": str(self.data),
                "bin_dir": str(pg_bin_dir()),
                "pgpass": str(self.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "waypost"},
                    "replication": {"username": "replicator", "password": "waypost"},
                },
                "parameters": {"unix_socket_directories": str(root), "max_connections": 20},
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication replicator 127.0.0.1/32 trust",
                ],
            },
        }

    def start(self) -> None:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [PATRONI, str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            user="postgres" if os.geteuid() == 0 else None,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.dir), "PYTHONUNBUFFERED": "1"},
        )

    def role(self) -> str:
        """What this member's REST API says it is ("" when it does not answer)."""
        if self.proc is None or self.proc.poll() is not None:
            return ""
        try:
            url = f"http://127.0.0.1:{self.api_port}/patroni"
            with urllib.request.urlopen(url, timeout=1) as r:
                return str(json.load(r).get("role", ""))
        except (OSError, urllib.error.URLError, ValueError):
            return ""

    def kill(self) -> None:
        """kill -9 of Patroni alone: its PostgreSQL goes on running, orphaned."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._stop_postgres()

    def _stop_postgres(self) -> None:
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)


class PatroniCluster:
    def __init__(self, consul_port: int, members: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="waypost-patroni-"))
        self.scope = f"wp{uuid.uuid4().hex[:8]}"
        self.members = [Member(f"m{n}", self.root, consul_port, self.scope) for n in range(members)]
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)

    def leaders(self) -> list[Member]:
        return [m for m in self.members if m.role() in ("master", "primary")]

    def logs(self) -> str:
        return "\n".join(
            f"--- {m.name}\n{m.log.read_text()[-3000:]}" for m in self.members if m.log.exists()
        )

    def close(self) -> None:
        for member in self.members:
            member.stop()
        shutil.rmtree(self.root, ignore_errors=True)
