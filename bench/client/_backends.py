"""Benchmark backends: N tiny HTTP/1.1 servers in one process, with set latencies.

    python bench/client/_backends.py --count 11 --latency 0.0167 --sd 0.0005

prints one JSON line `{"ports": [...]}` once listening. `--spec 0,10,1000:0.4`
gives each backend its own latency (ms) and share of 503 answers. `GET /__slow__?ms=200`
on a backend makes it answer every later request after that many ms
(`ms=0` turns it back to normal). Answers are built by hand on raw asyncio
protocols, so the backend process costs as little CPU as possible and the
measurement is about the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys

RESPONSE = b"HTTP/1.1 %d OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"


class Backend(asyncio.Protocol):
    def __init__(self, index: int, state: dict[str, float], rng: random.Random) -> None:
        self.index = index
        self.state = state
        self.rng = rng
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self._body_skip(head)
            self._request(head.split(b" ", 2)[1])

    def _body_skip(self, head: bytes) -> None:
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                self.buffer = self.buffer[int(line.split(b":")[1]) :]

    def _request(self, path: bytes) -> None:
        if path.startswith(b"/__slow__"):
            self.state["slow"] = float(path.split(b"ms=")[1]) / 1000
            self._reply()
            return
        delay = self.state["slow"] or max(
            0.0, self.rng.gauss(self.state["latency"], self.state["sd"])
        )
        asyncio.get_running_loop().call_later(delay, self._reply)

    def _reply(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            body = b"backend %d" % self.index
            failed = self.state["fail"] and self.rng.random() < self.state["fail"]
            self.transport.write(RESPONSE % (503 if failed else 200, len(body), body))


def _spec(text: str, sd: float) -> dict[str, float]:
    latency, _, fail = text.partition(":")
    return {"latency": float(latency) / 1000, "sd": sd, "fail": float(fail or 0)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=11)
    parser.add_argument("--latency", type=float, default=0.0167)
    parser.add_argument("--sd", type=float, default=0.0005)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--spec", default="", help="per backend `latency_ms[:failure_share]`, comma-separated"
    )
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    ports = []
    specs = [_spec(part, args.sd) for part in args.spec.split(",") if part]
    for index in range(len(specs) or args.count):
        state = specs[index] if specs else {"latency": args.latency, "sd": args.sd}
        state |= {"slow": 0.0, "fail": state.get("fail", 0.0)}
        rng = random.Random(index)
        server = await loop.create_server(
            lambda i=index, s=state, r=rng: Backend(i, s, r),
            args.host,
            0,  # type: ignore[misc]
        )
        ports.append(server.sockets[0].getsockname()[1])
    print(json.dumps({"ports": ports}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes


if __name__ == "__main__":
    asyncio.run(main())
