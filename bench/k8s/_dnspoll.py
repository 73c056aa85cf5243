"""A DNS poller in a process of its own, driven over a pipe.

Polling from a thread of the measuring process shared that process's GIL
with the asyncio loop (the HTTP watcher, the `k8s://` client): whenever the
loop held it, the poller waited for Python's switch interval (5 ms) before
it could look. In its own process it only waits for a CPU.

    python bench/k8s/_dnspoll.py HOST PORT NAME
    stdin:  {"want": [addresses], "deadline": <perf_counter>}
    stdout: {"at": <perf_counter when the A answer was `want`> | null}

Each try sends one prepared query on one socket, then sleeps 0.5 ms.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import dns.exception
import dns.message
import dns.query


class DnsPoller:
    """The parent's handle: `wait(want, deadline) -> when | None`."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, host, str(port), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def wait(self, want: frozenset[str], deadline: float) -> float | None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"want": sorted(want), "deadline": deadline}) + "\n")
        self.proc.stdin.flush()
        at = json.loads(self.proc.stdout.readline())["at"]
        return None if at is None else float(at)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


def _poll(host: str, port: int, name: str) -> None:
    query = dns.message.make_query(name, "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for line in sys.stdin:
            command = json.loads(line)
            want, deadline, at = frozenset(command["want"]), float(command["deadline"]), None
            while at is None and time.perf_counter() < deadline:
                try:
                    answer = dns.query.udp(query, host, port=port, timeout=1.0, sock=sock)
                    got = frozenset(r.address for rrset in answer.answer for r in rrset)
                except (dns.exception.DNSException, OSError):
                    got = frozenset()
                if got == want:
                    at = time.perf_counter()
                else:
                    time.sleep(0.0005)
            print(json.dumps({"at": at}), flush=True)


if __name__ == "__main__":
    _poll(sys.argv[1], int(sys.argv[2]), sys.argv[3])
