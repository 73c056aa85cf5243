"""Render the README's and docs' screenshots of the web UI with the test setup.

    PYTHONPATH=src .venv/bin/python scripts/ui-screenshots.py [OUT_DIR]   (default docs/img)

Starts a real agent (in memory), registers a small shop (payment, orders,
inventory, search, an agentless database node), moves some checks through
warning and critical and puts one instance in maintenance, then has headless
Chromium (tests/node/ui.js screenshots) save the services list, the payment
service's page, the page of its flapping instance with its timeline, the
nodes view, and the mesh's intentions with the matrix of who may call whom.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agentproc import AgentProcess  # noqa: E402  (the repository's own test helper)


def ttl(status: str = "passing", name: str = "", notes: str = "") -> dict[str, str]:
    return {"TTL": "10m", "Status": status, "Name": name, "Notes": notes}


def seed(http) -> None:  # type: ignore[no-untyped-def]
    def reg(body: dict[str, object]) -> None:
        http.put("/v1/agent/service/register", json=body).raise_for_status()

    for n, port in ((1, 3001), (2, 3002), (3, 3003)):
        reg(
            {
                "Name": "payment",
                "ID": f"payment-{n}",
                "Port": port,
                "Tags": ["v2", "eu-west"],
                "Meta": {"version": "2.4.1", "owner": "payments-team"},
                "Weights": {"Passing": 10, "Warning": 1},
                "Check": ttl(name="payment /health", notes="the app heartbeats every 10 s"),
            }
        )
    for n in (1, 2):
        reg(
            {
                "Name": "orders",
                "ID": f"orders-{n}",
                "Port": 4000 + n,
                "Tags": ["v1"],
                "Check": ttl(),
            }
        )
    reg({"Name": "inventory", "ID": "inventory-1", "Port": 5001, "Check": ttl("warning")})
    reg({"Name": "search", "ID": "search-1", "Port": 6001, "Tags": ["beta"], "Check": ttl()})
    db = {
        "Node": "db-1",
        "Address": "127.0.0.20",
        "NodeMeta": {"rack": "r2"},
        "Service": {"Service": "postgres", "ID": "postgres-1", "Port": 5432},
    }
    http.put("/v1/catalog/register", json=db).raise_for_status()
    for verb, note in (
        ("warn", "p99 latency 950 ms"),
        ("fail", "connection refused"),
        ("pass", "ok"),
        ("warn", "p99 latency 1200 ms"),
        ("fail", "HTTP 503"),
    ):
        http.put(f"/v1/agent/check/{verb}/service:payment-2", params={"note": note})
    http.put("/v1/agent/check/fail/service:inventory-1", params={"note": "disk 97% full"})
    http.put(
        "/v1/agent/service/maintenance/payment-3",
        params={"enable": "true", "reason": "rolling out 2.5.0"},
    )
    for source, destination, action, description in (
        ("orders", "payment", "allow", "checkout pays"),
        ("search", "payment", "deny", "search never pays"),
        ("*", "postgres", "deny", "only named services reach the database"),
        ("inventory", "postgres", "allow", ""),
        ("orders", "postgres", "allow", ""),
    ):
        http.put(
            "/v1/connect/intentions/exact",
            params={"source": source, "destination": destination},
            json={"Action": action, "Description": description},
        ).raise_for_status()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img").resolve()
    out.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", "web-01"
    ).start()
    try:
        with agent.client() as http:
            seed(http)
        result = subprocess.run(
            [
                "node",
                "ui.js",
                "screenshots",
                agent.http_url,
                "payment",
                "web-01",
                "payment-2",
                str(out),
            ],
            cwd=ROOT / "tests" / "node",
            capture_output=True,
            text=True,
            timeout=120,
            env={
                "CHROMIUM": shutil.which("chromium") or "/usr/bin/chromium",
                "PATH": "/usr/bin:/bin",
            },
        )
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        print(json.loads(result.stdout.strip().splitlines()[-1]))
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
