"""The fake API server in a process of its own, driven over a pipe.

A real kube-apiserver is another process: it does not share the GIL of the
client it serves. Run on a thread of the measuring process, the fake did, and
every event it sent, every bookmark and every list competed with the client
being measured (and with the DNS poller) for one interpreter. The benchmarks
that time latencies therefore start it here, in a child process:

    python bench/k8s/_fakeproc.py WORKDIR     (prints one JSON line: url, kubeconfig)
    stdin: {"op": "put", "obj": {...}}        -> {"at": <time.perf_counter() before put()>}
           {"op": "delete", "kind": K, "namespace": NS, "name": N} -> {"at": ...}
           {"op": "stop"}                      -> exits

`at` is the child's `time.perf_counter()`, which on Linux is CLOCK_MONOTONIC,
one clock for every process of the machine: the parent subtracts it from its own
readings directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class FakeApiProcess:
    """The parent's handle: `start()`, `put(obj) -> when`, `kubeconfig`, `stop()`."""

    def __init__(self, workdir: Path, bookmark_interval: float = 30.0) -> None:
        self.workdir = workdir
        self.bookmark_interval = bookmark_interval
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.kubeconfig = Path()

    def start(self) -> FakeApiProcess:
        clock = time.get_clock_info("perf_counter").implementation
        if clock != "clock_gettime(CLOCK_MONOTONIC)":
            raise RuntimeError(f"perf_counter is {clock}: not comparable across processes")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.workdir), str(self.bookmark_interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        hello = json.loads(self._line())
        self.url, self.kubeconfig = hello["url"], Path(hello["kubeconfig"])
        return self

    def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake API server process exited ({self.proc.poll()})")
        return line

    def _ask(self, command: dict[str, Any]) -> float:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return float(json.loads(self._line())["at"])

    def put(self, obj: dict[str, Any]) -> float:
        """Store `obj` (the watch event goes out); when, on the shared monotonic clock."""
        return self._ask({"op": "put", "obj": obj})

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(15)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _serve(workdir: Path, bookmark_interval: float) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.kubernetes.fakeapi import FakeKubeApi

    api = FakeKubeApi(bookmark_interval=bookmark_interval).start(workdir)
    try:
        print(json.dumps({"url": api.url, "kubeconfig": str(api.kubeconfig())}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            at = time.perf_counter()
            if command["op"] == "put":
                api.put(command["obj"])
            elif command["op"] == "delete":
                api.delete(command["kind"], command["namespace"], command["name"])
            else:
                break
            print(json.dumps({"at": at}), flush=True)
    finally:
        api.stop()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), float(sys.argv[2]))
