"""What ACLs and TLS cost per request, counted in instructions by callgrind.

Wall-clock rates on this shared 2-core machine swing by 2x between runs
(bench/agent/security.py gives them, with their spread); instruction counts
for the same code and inputs do not. The same tree's agent runs under
`valgrind --tool=callgrind --instr-atstart=no` twice: without ACLs, and with
`--acl-default-policy deny` and requests carrying a token that may read
(and write `bench-*`). After a warm-up, instrumentation is switched on for:

- COUNT reads of `GET /v1/health/service/web?passing` (10 passing instances,
  8 keep-alive connections), then
- COUNT durable registrations (16 connections, unique services, no checks).

and a third agent, without ACLs, serves the same reads over `--https` (a
certificate from a CA made here with trustme; keep-alive, so handshakes are
amortised as with real clients). Only the agent process is counted (all its
threads, OpenSSL included), not the client.

Usage: .venv/bin/python bench/agent/acl_instructions.py [--count 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from _common import header, line

ROOT = Path(__file__).resolve().parents[2]
MGMT = "6a1d3c5e-7b9f-4a2c-8e0d-1f3b5a7c9e11"
TLS_FILES: dict[str, str] = {}  # ca, cert, key: made by main() with trustme
RULES = (
    'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
    'service_prefix "bench-" { policy = "write" }'
)


def start(acl: bool, out: str, data: str, tls: list[str]) -> tuple[subprocess.Popen[str], str]:
    flags = ["--acl-default-policy", "deny"] if acl else []
    flags += tls
    cmd = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, "-m", "waypost.cli.main", "agent", "--data-dir", data,
        "--http", "127.0.0.1:0", "--dns", "off", "--grpc", "off", *flags,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    env["WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT"] = MGMT
    env["WAYPOST_ACL_TOKEN_AGENT"] = MGMT  # it writes its own node, as the ACL-off agent does
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    url = ""
    assert proc.stdout is not None
    for text in proc.stdout:
        if m := re.match(r"HTTPS? API: (https?://\S+)", text):
            url = m.group(1)
        if text.startswith("waypost agent running"):
            return proc, url
    raise RuntimeError("the agent did not start")


def seed(url: str, acl: bool, verify: Any = True) -> dict[str, str]:
    """Ten passing `web` instances; with ACLs, a reading and writing token (its header)."""
    admin = {"X-Consul-Token": MGMT} if acl else {}
    with httpx.Client(base_url=url, headers=admin, timeout=120, verify=verify) as http:
        for i in range(10):
            check = {"TTL": "10m", "Status": "passing"}
            body = {"Name": "web", "ID": f"web-{i}", "Port": 8080, "Check": check}
            http.put("/v1/agent/service/register", json=body).raise_for_status()
        if not acl:
            return {}
        http.put("/v1/acl/policy", json={"Name": "bench", "Rules": RULES}).raise_for_status()
        made = http.put("/v1/acl/token", json={"Policies": [{"Name": "bench"}]})
        made.raise_for_status()
        return {"X-Consul-Token": made.json()["SecretID"]}


async def drive(
    count: int, width: int, one: Callable[[aiohttp.ClientSession, int], object]
) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=width)) as session:
        gate = asyncio.Semaphore(width)

        async def limited(i: int) -> None:
            async with gate:
                await one(session, i)  # type: ignore[misc]

        await asyncio.gather(*(limited(i) for i in range(count)))


def reads(
    url: str, headers: dict[str, str], ssl: object = None
) -> Callable[[aiohttp.ClientSession, int], object]:
    async def one(session: aiohttp.ClientSession, i: int) -> None:
        path = f"{url}/v1/health/service/web?passing"
        async with session.get(path, headers=headers, ssl=ssl or True) as r:
            assert r.status == 200, await r.text()
            await r.read()

    return one


def registrations(
    url: str, headers: dict[str, str], offset: int
) -> Callable[[aiohttp.ClientSession, int], object]:
    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = json.dumps(
            {"Name": f"bench-{(offset + i) % 100}", "ID": f"bench-{offset + i}", "Port": 80}
        )
        async with session.put(f"{url}/v1/agent/service/register", data=body, headers=headers) as r:
            assert r.status == 200, await r.text()

    return one


def counted(pid: int, out: str, work: Callable[[], None]) -> int:
    """Instructions the agent ran during `work` (callgrind dumps, summed)."""
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)
    work()
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, check=True)
    before = set(glob.glob(out + "*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    fresh = [p for p in glob.glob(out + "*") if p not in before] or glob.glob(out + "*")
    total = 0
    for path in fresh:
        for text in Path(path).read_text(errors="replace").splitlines():
            if text.startswith(("summary:", "totals:")):
                total = max(total, int(text.split()[1]))
    return total


def measure(
    acl: bool, count: int, tls: list[str] | None = None, header: bool = False
) -> tuple[float, float]:
    """Instructions per read and per registration. With `header` (and ACLs
    off) every request carries an X-Consul-Token the agent ignores: what the
    header alone costs the HTTP layer, apart from anything ACLs do."""
    with tempfile.TemporaryDirectory(prefix="waypost-acl-instructions-") as tmp:
        return _measured(acl, count, tls, header, f"{tmp}/callgrind.out", f"{tmp}/data")


def _measured(
    acl: bool, count: int, tls: list[str] | None, header: bool, out: str, data: str
) -> tuple[float, float]:
    proc, url = start(acl, out, data, tls or [])
    try:
        if tls:
            return _tls_reads(proc.pid, out, url, count), 0.0
        headers = seed(url, acl)
        if header and not acl:
            headers = {"X-Consul-Token": "0b9e4f3a-6c2d-4e8f-a1b7-5d3c9e2f7a60"}
        asyncio.run(drive(300, 8, reads(url, headers)))  # warm-up
        asyncio.run(drive(300, 16, registrations(url, headers, 10**6)))
        read = counted(proc.pid, out, lambda: asyncio.run(drive(count, 8, reads(url, headers))))
        write = counted(
            proc.pid, out, lambda: asyncio.run(drive(count, 16, registrations(url, headers, 0)))
        )
    finally:
        proc.terminate()
        proc.wait(120)
    return read / count, write / count


def _tls_reads(pid: int, out: str, url: str, count: int) -> float:
    context = ssl.create_default_context(cafile=TLS_FILES["ca"])
    seed(url, False, context)
    asyncio.run(drive(300, 8, reads(url, {}, context)))
    return counted(pid, out, lambda: asyncio.run(drive(count, 8, reads(url, {}, context)))) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    header(f"instructions per request in the agent (callgrind), ACL off vs on, {args.count} each")
    off = measure(False, args.count)
    on = measure(True, args.count)
    with_header = measure(False, args.count, header=True)
    tls = measure(False, args.count, _tls_flags())
    ratio = off[0] / tls[0]
    line(f"health read    HTTP {off[0] / 1e3:6.0f}k  HTTPS {tls[0] / 1e3:6.0f}k  ratio {ratio:.3f}")
    for what, value in (("read", with_header[0]), ("registration", with_header[1])):
        line(f"ACL off, a token header sent anyway: {what} {value / 1e3:6.0f}k")
    for what, a, b in (("health read", off[0], on[0]), ("registration", off[1], on[1])):
        line(
            f"{what:13} ACL off {a / 1e3:6.0f}k  ACL on {b / 1e3:6.0f}k  ratio {a / b:.3f} (off/on)"
        )


# The TLS run's certificate files, removed when the script exits.
_TLS_DIR = tempfile.TemporaryDirectory(prefix="waypost-acl-instructions-tls-")


def _tls_flags() -> list[str]:
    import trustme

    folder = _TLS_DIR.name
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    TLS_FILES.update(ca=f"{folder}/ca.pem", cert=f"{folder}/cert.pem", key=f"{folder}/key.pem")
    ca.cert_pem.write_to_path(TLS_FILES["ca"])
    issued.private_key_and_cert_chain_pem.write_to_path(TLS_FILES["cert"])
    issued.private_key_pem.write_to_path(TLS_FILES["key"])
    return ["--http", "off", "--https", "127.0.0.1:0", "--tls-cert-file", TLS_FILES["cert"],
            "--tls-key-file", TLS_FILES["key"]]  # fmt: skip


if __name__ == "__main__":
    main()
