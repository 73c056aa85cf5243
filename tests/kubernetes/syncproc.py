"""A real `waypost k8s-sync` process for tests and benchmarks (like agentproc.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

FAST_LEASE = ["--lease-duration", "2", "--renew-deadline", "1.5", "--retry-period", "0.25"]


class SyncProcess:
    def __init__(
        self, kubeconfig: Path, agent_url: str, *args: str, identity: str = "sync-a"
    ) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "waypost.cli.main",
            "k8s-sync",
            "--kubeconfig",
            str(kubeconfig),
            "--agent",
            agent_url,
            "--identity",
            identity,
            *FAST_LEASE,
            *args,
        ]
        self.identity = identity
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> SyncProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.wait_for("waypost k8s-sync running")
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"k8s-sync exited ({self.proc.returncode}):\n{''.join(self.output)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"k8s-sync never printed {text!r}:\n{''.join(self.output)}")
            time.sleep(0.02)

    @property
    def leading(self) -> bool:
        marks = [line for line in self.output if "leading as" in line or "stopped leading" in line]
        return bool(marks) and "leading as" in marks[-1]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self._reader is not None:
                self._reader.join(2)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
