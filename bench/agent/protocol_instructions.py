"""Instructions per request of the agent's HTTP protocol alone, counted by callgrind.

The real httptools parser in `api/protocol.py`'s protocol class is fed a
registration's request (aiohttp's six headers and a small body) COUNT times
on one connection, after a warm-up of 200; nothing answers it (each request
is marked answered at once) and no app runs, so the count is the parser
callbacks, the scope, the cycle and the read deadline: uvicorn's per-request
work as the agent runs it. The cyclic GC is off (the agent tunes it too).
Compares trees:

    .venv/bin/python bench/agent/protocol_instructions.py --tree /path/to/old --tree .
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import header, line

REQUEST = (
    b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: 127.0.0.1:1234\r\n"
    b"User-Agent: Python/3.11 aiohttp/3.9\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    b"Content-Length: 2\r\nContent-Type: application/octet-stream\r\n\r\n{}"
)


class _Transport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 80)}.get(name, default)

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never started")


async def _feed(count: int) -> None:
    """In the child, under callgrind: feed the requests, instrumented."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from waypost.api.protocol import guarded_protocol

    config = Config(_app, limit_concurrency=50_000)
    config.load()
    cls: Any = guarded_protocol(30.0)
    cls._start_asgi_task = lambda self, cycle, app: cycle.on_response()  # answered at once
    protocol = cls(config, ServerState(), {})
    protocol.connection_made(_Transport())
    for _ in range(200):
        protocol.data_received(REQUEST)
    control = ["callgrind_control", "-i"]
    subprocess.run([*control, "on", str(os.getpid())], capture_output=True, check=True)
    for _ in range(count):
        protocol.data_received(REQUEST)
    subprocess.run([*control, "off", str(os.getpid())], capture_output=True, check=True)


def _total(tree: Path, count: int) -> int:
    with tempfile.TemporaryDirectory(prefix="waypost-protocol-instructions-") as tmp:
        return _total_in(tree, count, f"{tmp}/callgrind.out")


def _total_in(tree: Path, count: int, out: str) -> int:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{Path(__file__).parent}"}
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--child", str(count),
    ]  # fmt: skip
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    for text in Path(out).read_text(errors="replace").splitlines():
        if text.startswith("totals:"):
            return int(text.split()[1])
    raise RuntimeError(f"no totals in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a checkout")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        import gc

        gc.disable()
        asyncio.run(_feed(args.child))
        return
    header(f"instructions per request of the HTTP protocol alone (callgrind), {args.count}")
    for tree in args.tree or [Path(".")]:
        # The toggling itself (a subprocess) is counted once: measured with 1 request.
        per = (_total(tree.resolve(), args.count + 1) - _total(tree.resolve(), 1)) / args.count
        line(f"{tree}: {per / 1e3:.1f}k instructions per request")


if __name__ == "__main__":
    main()
