"""What ACLs and TLS cost: the same reads and writes with and without, in one run.

Three agents on this machine (sqlite store, the same 10-instance `web`):

- plain: no ACLs, HTTP;
- acl: `--acl-default-policy deny`, requests carry a token that may read
  (`service_prefix "" read`, `node_prefix "" read`) or write `bench-*`;
- tls: no ACLs, `--https` beside `--http` (a certificate from a CA made here
  with trustme).

Reads: `GET /v1/health/service/web?passing` with wrk (keep-alive), plain and
acl alternating rep by rep, then tls's HTTPS listener against its own HTTP
one. Writes: durable `PUT /v1/agent/service/register` with aiohttp (64
connections), plain against acl, alternating. Medians with min-max.

Usage: .venv/bin/python bench/agent/security.py [--reps 5] [--duration 8] [--count 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import httpx
from _common import agent, cpu_seconds, header, line, median
from registrations import drive, registration

MGMT = "6a1d3c5e-7b9f-4a2c-8e0d-1f3b5a7c9e11"
READ_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'
WRITE_RULES = 'service_prefix "bench-" { policy = "write" }\n' + READ_RULES


def token(base: str, rules: str, name: str) -> str:
    headers = {"X-Consul-Token": MGMT}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        http.put("/v1/acl/policy", json={"Name": name, "Rules": rules}).raise_for_status()
        made = http.put("/v1/acl/token", json={"Policies": [{"Name": name}]})
        made.raise_for_status()
        return str(made.json()["SecretID"])


def wrk(url: str, duration: int, secret: str = "") -> float:
    cmd = ["wrk", "-t1", "-c8", f"-d{duration}s", url]
    if secret:
        cmd[1:1] = ["-H", f"X-Consul-Token: {secret}"]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, timeout=duration + 30
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError("wrk saw errors:\n" + out)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


Rates = tuple[list[float], list[float]]


def compare(what: str, a: str, a_rates: list[float], b: str, b_rates: list[float]) -> None:
    ratio = median(b_rates) / median(a_rates)
    line(f"{what:9} {a} {spread(a_rates)}  {b} {spread(b_rates)}  ratio {ratio:.2f}")


def spread(values: list[float]) -> str:
    return f"{median(values):8.0f} (min {min(values):.0f}, max {max(values):.0f})"


def reads(plain: Served, acl: Served, reader: str, reps: int, duration: int) -> Rates:
    """Alternating wrk runs; also the agent's own CPU time per read, which other
    load on a shared machine disturbs far less than the rate."""
    wrk(plain.url, 2), wrk(acl.url, 2, reader)  # warm-up
    off, on, cpu_off, cpu_on = [], [], [], []
    for rep in range(reps):
        for served, rates, cpus, secret in ((plain, off, cpu_off, ""), (acl, on, cpu_on, reader)):
            before = cpu_seconds(served.pid)
            rates.append(wrk(served.url, duration, secret))
            cpus.append((cpu_seconds(served.pid) - before) / (rates[-1] * duration) * 1e6)
        line(
            f"rep {rep + 1}: reads ACL off {off[-1]:8.0f}/s ({cpu_off[-1]:.0f} us CPU each)"
            f"  ACL on {on[-1]:8.0f}/s ({cpu_on[-1]:.0f} us)"
        )
    line(f"agent CPU per read: ACL off {median(cpu_off):.1f} us, ACL on {median(cpu_on):.1f} us")
    return off, on


class Served:
    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid


def writes(
    plain: str, acl: str, writer: str, reps: int, count: int
) -> tuple[list[float], list[float]]:
    off, on = [], []
    for rep in range(reps):
        off.append(asyncio.run(register_rate(plain, count, rep * 2, "")))
        on.append(asyncio.run(register_rate(acl, count, rep * 2 + 1, writer)))
        line(f"rep {rep + 1}: registrations ACL off {off[-1]:6.0f}/s  ACL on {on[-1]:6.0f}/s")
    return off, on


async def register_rate(base: str, count: int, run: int, secret: str) -> float:
    """registrations.py's driver, with the token on every request when there is one."""
    url = f"{base}/v1/agent/service/register"
    headers = {"X-Consul-Token": secret} if secret else {}
    seq = [0]

    async def request(session: aiohttp.ClientSession, i: int) -> None:
        seq[0] += 1
        async with session.put(url, data=registration(seq[0], run), headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"register failed: {resp.status} {await resp.text()}")
            await resp.read()

    return await drive(count, 64, request)


def setup(base: str, secret: str = "") -> str:
    """Ten passing instances of `web` (as health_read.py registers them); the read's URL."""
    headers = {"X-Consul-Token": secret} if secret else {}
    with httpx.Client(base_url=base, timeout=30, headers=headers) as http:
        for i in range(10):
            check = {"CheckID": f"web-{i}-ttl", "TTL": "10m", "Status": "passing"}
            body = {
                "Name": "web",
                "ID": f"web-{i}",
                "Address": f"10.0.0.{i + 1}",
                "Port": 8080,
                "Check": check,
            }
            http.put("/v1/agent/service/register", json=body).raise_for_status()
        assert len(http.get("/v1/health/service/web?passing").json()) == 10
    return f"{base}/v1/health/service/web?passing"


def tls_reads(
    http_url: str, https_url: str, reps: int, duration: int
) -> tuple[list[float], list[float]]:
    wrk(http_url, 2), wrk(https_url, 2)
    plain, tls = [], []
    for rep in range(reps):
        plain.append(wrk(http_url, duration))
        tls.append(wrk(https_url, duration))
        line(f"rep {rep + 1}: reads HTTP {plain[-1]:8.0f}/s  HTTPS {tls[-1]:8.0f}/s")
    return plain, tls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--count", type=int, default=3000, help="registrations per run")
    args = parser.parse_args()
    header("ACLs and TLS: health reads (wrk -t1 -c8) and durable registrations (64 connections)")
    acl_flags = ("--acl-default-policy", "deny")
    # The agent token writes its own node (else it is not in the answers, which would
    # then be smaller than the ACL-off agent's); the management one will do here.
    env = {"WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": MGMT, "WAYPOST_ACL_TOKEN_AGENT": MGMT}
    with agent("sqlite") as plain, _agent_env(env, *acl_flags) as acl:
        reader = token(acl.http_url, READ_RULES, "reader")
        writer = token(acl.http_url, WRITE_RULES, "writer")
        plain_url = setup(plain.http_url)
        acl_url = setup(acl.http_url, MGMT)
        assert plain.proc is not None and acl.proc is not None
        off, on = reads(
            Served(plain_url, plain.proc.pid), Served(acl_url, acl.proc.pid), reader,
            args.reps, args.duration,
        )  # fmt: skip
        compare("reads/s", "ACL off", off, "ACL on", on)
        w_off, w_on = writes(plain.http_url, acl.http_url, writer, args.reps, args.count)
        compare("writes/s", "ACL off", w_off, "ACL on", w_on)
    import trustme

    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        issued = ca.issue_cert("127.0.0.1")
        issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        tls_flags = (
            "--https",
            "127.0.0.1:0",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
        )
        with agent("sqlite", *tls_flags) as tls:
            url = setup(tls.http_url)
            https_url = url.replace(tls.http_url, tls.https_url)
            plain_rates, tls_rates = tls_reads(url, https_url, args.reps, args.duration)
            compare("reads/s", "HTTP", plain_rates, "HTTPS", tls_rates)


def _agent_env(env: dict[str, str], *flags: str):  # type: ignore[no-untyped-def]
    import os

    os.environ.update(env)  # the agent process inherits it; a token never goes on a flag
    return agent("sqlite", *flags)


if __name__ == "__main__":
    main()
