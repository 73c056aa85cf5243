"""10,000 concurrent blocking queries on one agent, then one change: how fast it reaches them all.

The agent (sqlite store) serves `web` with 10 instances. This process (a
separate one) opens CLIENTS keep-alive connections and parks one blocking query
on each: `GET /v1/health/service/web?index=<current>&wait=5m`. Once the agent
has them all and is idle, one registration changes `web`; every query's time
from sending that write until its full answer arrives is recorded (the
write's own durable commit is included). Like real watchers, each connection
then parks the next query on the new index, and the round repeats.

The watchers (default, `--watchers c`) are `watchers.c`, built with the
machine's C compiler: each answer's arrival is timed when its last byte is
read; bodies are counted, neither parsed nor decompressed, so that they cost
~4-5 µs of CPU per answer on the cores they share with the agent. With them
the script also measures the floor in the same run: `watchers serve`, a C
server that parks the same 10,000 requests and writes one prebuilt answer of
the agent's size to each (one thread, then two), timed by the same watchers.
No server can answer these watchers faster on this machine than that.

`--watchers python` runs raw asyncio (uvloop when installed) with httptools
instead, in this process. Like the real watchers (Go's net/http under
consul-template, Nomad, Vault, Prometheus; requests and httpx) it decompresses
every gzipped answer, so that its own CPU figure is what a client pays
(14-27 µs per answer, more than the agent's on this 2-core machine).

Both send `Accept-Encoding: gzip`, as the real ones do; `--encoding identity`
asks for plain answers instead. The watchers' CPU per round (user + system,
from the write, or for watchers.c from their requests, until every answer is
in) is printed beside the agent's.

`--callgrind` (C watchers) runs the agent under valgrind's callgrind,
instrumenting only each round's window (from just before the write until
the agent is idle again: the write, the wake-up, the sends' user-space
part, the cycles finished), and prints the agent's instructions per answer:
unlike the wall clock, the count does not move with the machine's load, so
it compares trees on a busy machine (its latencies are valgrind's, not the
agent's: ignore them). `--no-floor` skips the floor. (perf's counters are not
available on this VM.)

It runs in a network namespace of its own (as root, with `ip`), where the
loopback has no netfilter rules: on the host's, rules another program left
(a Docker daemon's) put connection tracking on every packet, ~14% of each
send for the agent and the floor alike (`_common.in_fresh_netns`).
`--host-network` runs on the host's loopback instead. The header says which.

Usage: .venv/bin/python bench/agent/blocking.py [--reps 3] [--clients 10000]
       [--encoding gzip|identity] [--watchers c|python] [--callgrind] [--no-floor]
       [--host-network]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import resource
import shutil
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import httptools
import httpx
from _common import (
    agent,
    cpu_seconds,
    header,
    in_fresh_netns,
    line,
    median,
    percentile,
    raise_nofile,
    rss_mb,
)

SERVICE = "web"
CALLGRIND = ""  # --callgrind: the agent's callgrind output file (Instructions)


class Watcher(asyncio.Protocol):
    """One keep-alive connection carrying one blocking query at a time."""

    gzipped_answers = 0  # over all watchers: shows the agent compressed what was asked

    def __init__(self, host: str, accept: str) -> None:
        self.host = host
        self.accept = accept  # the Accept-Encoding line, or ""
        self.body: list[bytes] = []
        self.gzipped = False
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[float] | None = None
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def ask(self, index: int) -> asyncio.Future[float]:
        self.done = asyncio.get_running_loop().create_future()
        request = (
            f"GET /v1/health/service/{SERVICE}?index={index}&wait=5m HTTP/1.1\r\n"
            f"Host: {self.host}\r\n{self.accept}\r\n"
        )
        assert self.transport is not None
        self.transport.write(request.encode())
        return self.done

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-encoding":
            self.gzipped = value.strip().lower() == b"gzip"

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        if self.gzipped:
            body = zlib.decompress(body, 47)  # what a client does: gzip (or zlib) header
            Watcher.gzipped_answers += 1
            self.gzipped = False
        if self.done is not None and not self.done.done():
            if self.status == 200:
                self.done.set_result(time.monotonic())
            else:
                self.done.set_exception(RuntimeError(f"HTTP {self.status}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))


def setup(http: httpx.Client) -> None:
    for i in range(10):
        body = {
            "Name": SERVICE,
            "ID": f"{SERVICE}-{i}",
            "Address": f"10.0.0.{i + 1}",
            "Port": 8080,
            "Check": {"CheckID": f"{SERVICE}-{i}-ttl", "TTL": "10m", "Status": "passing"},
        }
        http.put("/v1/agent/service/register", json=body).raise_for_status()


def register(http: httpx.Client, body: dict[str, object]) -> float:
    """The change; returns when its answer came."""
    http.put("/v1/agent/service/register", json=body).raise_for_status()
    return time.monotonic()


def current_index(http: httpx.Client) -> int:
    resp = http.get(f"/v1/health/service/{SERVICE}")
    resp.raise_for_status()
    return int(resp.headers["x-consul-index"])


async def settle(pid: int, quiet: float = 0.02, window: float = 0.5, limit: float = 60.0) -> None:
    """Wait until the agent uses under `quiet` of a core over `window` s (all queries parked)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        if cpu_seconds(pid) - before <= quiet * window:
            return
    raise RuntimeError("the agent never went idle")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def connect_all(host: str, port: int, count: int, accept: str) -> list[Watcher]:
    loop = asyncio.get_running_loop()
    watchers: list[Watcher] = []
    for start in range(0, count, 500):  # batches: stay under the listen backlog
        batch = await asyncio.gather(
            *(
                loop.create_connection(lambda: Watcher(f"{host}:{port}", accept), host, port)
                for _ in range(start, min(count, start + 500))
            )
        )
        watchers.extend(protocol for _, protocol in batch)
    return watchers


class Child:
    """A process of watchers.c, driven line by line over its stdin and stdout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str) -> list[str]:
        """The next line's words after `word` (which it must start with)."""
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split()
        if not words or words[0] != word:
            raise RuntimeError(f"watchers.c: expected {word!r}, got {' '.join(words)!r}")
        return words[1:]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def build_watchers(into: str) -> str:
    """watchers.c compiled with the machine's C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("--watchers c needs a C compiler (cc or gcc): apt-get install gcc")
    binary = os.path.join(into, "watchers")
    source = Path(__file__).with_name("watchers.c")
    subprocess.run([compiler, "-O2", "-pthread", "-o", binary, str(source)], check=True)
    return binary


def arrivals(words: list[str], sent: float) -> tuple[list[float], float, int]:
    """The answer line of watchers.c: latencies in ms from `sent`, its CPU ms, bytes."""
    cpu, size, times = float(words[0]), int(words[1]), words[2:]
    return sorted((float(t) - sent) * 1000 for t in times), cpu, size


class Instructions:
    """The agent's instructions (callgrind, all its threads) over one round:
    instrumentation on from just before the write until the agent is idle
    again, then dumped to its own file."""

    def __init__(self, pid: int, out: str) -> None:
        self.pid, self.out = pid, out
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)

    def stop(self) -> float:
        before = set(glob.glob(self.out + ".*"))
        for args in (["-i", "off"], ["--dump"]):
            subprocess.run(
                ["callgrind_control", *args, str(self.pid)], capture_output=True, check=True
            )
        for _ in range(600):  # the dump is written by the agent's process: wait for it
            new = set(glob.glob(self.out + ".*")) - before
            if new:
                text = Path(new.pop()).read_text(errors="replace")
                rows = text.splitlines()
                # "summary:" heads the file, "totals:" ends it; either may be left at 0.
                return max(
                    float(r.split()[1]) for r in rows if r.startswith(("summary:", "totals:"))
                )
            time.sleep(0.1)
        raise RuntimeError(f"callgrind wrote no dump next to {self.out}")


def c_round(
    http: httpx.Client, watchers: Child, pid: int, rep: int, index: int
) -> tuple[dict[str, float], int]:
    """One round against the agent with the C watchers; the answers' size too."""
    watchers.send(f"ask {index}")
    watchers.expect("asked")
    asyncio.run(settle(pid))
    parked_rss = rss_mb(pid)
    body = {"Name": SERVICE, "ID": f"{SERVICE}-extra-{rep}", "Address": "10.0.1.1", "Port": 8080}
    counter = Instructions(pid, CALLGRIND) if CALLGRIND else None
    cpu0 = cpu_seconds(pid)
    sent = time.monotonic()
    # The watchers are another process: this synchronous write holds nothing of theirs.
    acked = register(http, body)
    latencies, own, size = arrivals(watchers.expect("answers"), sent)
    asyncio.run(settle(pid))
    cpu = cpu_seconds(pid) - cpu0
    result = summary(latencies, (acked - sent) * 1000, own)
    result.update(rss=max(parked_rss, rss_mb(pid)), cpu_us=cpu / len(latencies) * 1e6)
    if counter is not None:
        result["instructions"] = counter.stop() / len(latencies)
    return result, size


def summary(latencies: list[float], ack: float, loadgen_ms: float) -> dict[str, float]:
    return {
        "first": latencies[0],
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": latencies[-1],
        "ack": ack,
        "loadgen_ms": loadgen_ms,
    }


def run_c(
    base: str, pid: int, clients: int, reps: int, gzip: bool, binary: str
) -> tuple[list[dict[str, float]], int]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    results: list[dict[str, float]] = []
    size = 0
    with httpx.Client(base_url=base, timeout=30) as http:
        setup(http)
        t = time.monotonic()
        watchers = Child(binary, "watch", host, port, str(clients), SERVICE, str(int(gzip)))
        try:
            watchers.expect("connected")
            line(f"{clients} connections open in {time.monotonic() - t:.1f} s (C watchers)")
            for rep in range(reps):
                result, size = c_round(http, watchers, pid, rep, current_index(http))
                results.append(result)
                extra = f"{size // clients} bytes per answer with its head"
                if "instructions" in result:
                    extra += f"  {result['instructions']:,.0f} agent instructions per answer"
                report(rep, result, extra)
        finally:
            watchers.close()
    return results, size // clients


def floor(
    binary: str, clients: int, answer: int, threads: int, reps: int
) -> list[dict[str, float]]:
    """The same watchers against watchers.c's server: one prebuilt answer
    of `answer` bytes (head included) written to every connection."""
    server = Child(binary, "serve", str(clients), str(answer), str(threads))
    results: list[dict[str, float]] = []
    try:
        port = server.expect("port")[0]
        watchers = Child(binary, "watch", "127.0.0.1", port, str(clients), SERVICE, "0")
        try:
            watchers.expect("connected")
            for rep in range(reps):
                watchers.send("ask 1")
                watchers.expect("asked")
                server.expect("parked")
                time.sleep(0.3)  # as settle(): nothing else moving
                sent = time.monotonic()
                server.send("go")
                wall, user, system = (float(w) for w in server.expect("sent"))
                latencies, own, _ = arrivals(watchers.expect("answers"), sent)
                result = summary(latencies, 0.0, own)
                result.update(send_ms=wall, send_cpu_ms=user + system)
                results.append(result)
                line(
                    f"floor, {threads} sending thread(s), rep {rep + 1}: "
                    f"first {result['first']:.0f} ms  p50 {result['p50']:.0f} ms  "
                    f"p99 {result['p99']:.0f} ms  max {result['max']:.0f} ms  "
                    f"(its writes took {wall:.0f} ms, {user + system:.0f} ms CPU; "
                    f"watchers' CPU {own:.0f} ms)"
                )
        finally:
            watchers.close()
    finally:
        server.close()
    return results


def report(rep: int, result: dict[str, float], extra: str) -> None:
    line(
        f"rep {rep + 1}: first {result['first']:.0f} ms  p50 {result['p50']:.0f} ms  "
        f"p99 {result['p99']:.0f} ms  "
        f"max {result['max']:.0f} ms  (write acked after {result['ack']:.1f} ms)  "
        f"agent RSS {result['rss']:.0f} MB  agent CPU {result['cpu_us']:.1f} µs per answer  "
        f"load generator CPU {result['loadgen_ms']:.0f} ms to receive them  {extra}"
    )


async def run(
    base: str, pid: int, clients: int, reps: int, encoding: str
) -> list[dict[str, float]]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    accept = "Accept-Encoding: gzip\r\n" if encoding == "gzip" else ""
    results = []
    with httpx.Client(base_url=base, timeout=30) as http:
        setup(http)
        t = time.monotonic()
        watchers = await connect_all(host, int(port), clients, accept)
        line(f"{clients} connections open in {time.monotonic() - t:.1f} s")
        for rep in range(reps):
            index = current_index(http)
            futures = [w.ask(index) for w in watchers]
            await settle(pid)
            parked_rss = rss_mb(pid)
            # The change: one more instance of the watched service (a durable write).
            body = {
                "Name": SERVICE,
                "ID": f"{SERVICE}-extra-{rep}",
                "Address": "10.0.1.1",
                "Port": 8080,
            }
            cpu0, own0 = cpu_seconds(pid), own_cpu()
            sent = time.monotonic()
            # The write from another thread, as from another process: a
            # synchronous call here would stop this loop reading answers until
            # the write's own answer came (after the agent had sent all 10,000),
            # and the latencies would add that wait to the watchers' receiving.
            write = asyncio.create_task(asyncio.to_thread(register, http, body))
            finished = await asyncio.wait_for(asyncio.gather(*futures), 120)
            acked = await write
            own = own_cpu() - own0
            latencies = sorted((f - sent) * 1000 for f in finished)
            await settle(pid)  # the agent idle again: the answers' whole cost
            cpu = cpu_seconds(pid) - cpu0
            after_rss = rss_mb(pid)
            result = summary(latencies, (acked - sent) * 1000, own * 1000)
            result.update(rss=max(parked_rss, after_rss), cpu_us=cpu / len(latencies) * 1e6)
            results.append(result)
            report(rep, result, f"({Watcher.gzipped_answers} gzipped)")
            Watcher.gzipped_answers = 0
        for w in watchers:
            assert w.transport is not None
            w.transport.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument(
        "--encoding",
        choices=("gzip", "identity"),
        default="gzip",
        help="Accept-Encoding of the watchers (gzip: what Go's and Python's clients send)",
    )
    parser.add_argument(
        "--watchers",
        choices=("c", "python"),
        default="c",
        help="python: asyncio+httptools, decompressing as clients do; c: watchers.c, and the floor",
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="count the agent's instructions (valgrind)"
    )
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--host-network",
        action="store_true",
        help="run on the host's loopback, with its netfilter rules (default: a fresh namespace)",
    )
    args = parser.parse_args()
    if not args.host_network:
        in_fresh_netns()
    global CALLGRIND
    limit = raise_nofile(args.clients * 2 + 1024)  # inherited by the agent as well
    if limit < args.clients + 256:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}; need {args.clients + 256}")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    header(
        f"{args.clients} blocking queries on /v1/health/service/{SERVICE}, then one change "
        f"(Accept-Encoding: {args.encoding})"
    )
    with tempfile.TemporaryDirectory(prefix="waypost-watchers-") as tmp:
        binary = build_watchers(tmp) if args.watchers == "c" else ""
        # Every watcher comes from 127.0.0.1: lift the per-client limit (200 by
        # default, as Consul's http_max_conns_per_client) above the watcher count.
        prefix: list[str] = []
        if args.callgrind:
            CALLGRIND = f"{tmp}/callgrind.out"
            prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
            prefix.append(f"--callgrind-out-file={CALLGRIND}")
        limit_arg = ("--http-max-conns-per-client", str(args.clients + 100))
        with agent("sqlite", *limit_arg, prefix=prefix) as proc:
            pid = proc.proc.pid  # type: ignore[union-attr]
            line(f"agent pid {pid}, RSS at start {rss_mb(pid):.0f} MB; driver pid {os.getpid()}")
            if binary:
                gzip = args.encoding == "gzip"
                results, answer = run_c(proc.http_url, pid, args.clients, args.reps, gzip, binary)
            else:
                results = asyncio.run(
                    run(proc.http_url, pid, args.clients, args.reps, args.encoding)
                )
        verdict("agent", results)
        line(f"median agent CPU per answer {median([r['cpu_us'] for r in results]):.1f} µs")
        loadgen = median([r["loadgen_ms"] for r in results])
        line(f"median load generator CPU per round {loadgen:.0f} ms")
        rss = median([r["rss"] for r in results])
        line(
            f"median agent RSS {rss:.0f} MB (target <= 300 MB: {'PASS' if rss <= 300 else 'MISS'})"
        )
        if CALLGRIND and binary:
            counts = " ".join(f"{r['instructions']:,.0f}" for r in results)
            per = median([r["instructions"] for r in results])
            line(f"median agent instructions (user) per answer {per:,.0f} ({counts})")
        if binary and args.floor:
            for threads in (1, 2):
                verdict(
                    f"floor, {threads} thread(s)",
                    floor(binary, args.clients, answer, threads, args.reps),
                    judged=False,
                )


def verdict(who: str, results: list[dict[str, float]], judged: bool = True) -> None:
    """The medians of `results`; judged against the target only for the agent
    (the floor has no agent in it: it is the reference the target is read against)."""
    p50 = median([r["p50"] for r in results])
    p99 = median([r["p99"] for r in results])
    spread = " ".join(f"{r['p99']:.0f}" for r in results)
    judgement = f"target <= 100 ms: {'PASS' if p99 <= 100 else 'MISS'}" if judged else "reference"
    line(f"{who}: median p50 {p50:.0f} ms, median p99 {p99:.0f} ms ({spread}) ({judgement})")


if __name__ == "__main__":
    main()
