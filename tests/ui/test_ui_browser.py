"""The web UI in a real headless Chromium (playwright-core), against real agents.

tests/node/ui.js drives the browser and prints what the page showed; these
tests set up the agent side and assert on it. Every view is covered: the
services list (live counts, filter, status filter, sorting, the empty state),
a service's page and an instance's (deep links that survive a reload, every
field and check, the health timeline), the nodes view, keyboard use, labels
and contrast, and recovery after the agent restarts under the page.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..agentproc import AgentProcess

NODE_DIR = Path(__file__).parent.parent / "node"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ENV = {"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin"}

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (make test installs it)"
)


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs it (Debian package chromium)")


def run_ui(*args: str, timeout: float = 90) -> dict[str, Any]:
    result = subprocess.run(
        ["node", "ui.js", *args],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["errors"] == []
    return seen


def register(http: httpx.Client, body: dict[str, Any]) -> None:
    assert http.put("/v1/agent/service/register", json=body).status_code == 200


def seed(http: httpx.Client, name: str, unique: str) -> None:
    """Three instances: one passing with every field set, one critical, one in maintenance."""
    register(
        http,
        {
            "Name": name,
            "ID": f"{name}-1",
            "Port": 3001,
            "Tags": ["blue", "<i>x</i>", f"tag-{name}"],
            "Meta": {"version": "2.1"},
            "Weights": {"Passing": 3, "Warning": 1},
            "Check": {
                "TTL": "5m",
                "Status": "passing",
                "Name": "heartbeat",
                "Notes": "beats every 10s",
            },
        },
    )
    register(http, {"Name": name, "ID": f"{name}-2", "Port": 3002, "Check": {"TTL": "5m"}})
    register(
        http,
        {
            "Name": name,
            "ID": f"{name}-3",
            "Port": 3003,
            "Check": {"TTL": "5m", "Status": "passing"},
        },
    )
    http.put(
        f"/v1/agent/service/maintenance/{name}-3",
        params={"enable": "true", "reason": "deploying v2"},
    )
    # Another service and a node without an agent, so that filters have something to leave out.
    decoy = {
        "Name": f"decoy-{unique}",
        "ID": f"decoy-{unique}-1",
        "Check": {"TTL": "5m", "Status": "passing"},
    }
    register(http, decoy)
    ext = {
        "Node": f"ext-{unique}",
        "Address": "127.0.0.9",
        "Service": {"Service": f"ext-{unique}", "Port": 5432},
    }
    assert http.put("/v1/catalog/register", json=ext).status_code == 200


def assert_accessible(report: dict[str, Any]) -> None:
    assert report["unlabelled"] == []
    assert report["h1"] == 1
    low = [c for c in report["contrast"] if c["ratio"] < 4.5]
    assert low == [], low
    assert len(report["contrast"]) > 10  # the check did look at the page


def test_every_view(agent: AgentProcess, unique: str) -> None:
    name = f"ui-{unique}"
    decoy = f"decoy-{unique}"
    with agent.client() as http:
        seed(http, name, unique)
        try:
            seen = run_ui("views", agent.http_url, name, decoy)
        finally:  # other tests list the nodes of the shared agent
            http.put("/v1/catalog/deregister", json={"Node": f"ext-{unique}"})

    # The list, and its live update (the TTL check passed through the API).
    assert "test-node" in seen["brand"]
    assert seen["before"] == [name, "critical", "3", "1", "0", "1", "1", f"<i>x</i>bluetag-{name}"]
    assert seen["after"] == [
        name,
        "maintenance",
        "3",
        "2",
        "0",
        "0",
        "1",
        f"<i>x</i>bluetag-{name}",
    ]
    assert_accessible(seen["listA11y"])
    # Filter typed from the keyboard, kept in the URL and across a reload.
    assert seen["tabsToFilter"] <= 6
    assert seen["filtered"] == [name]
    assert seen["filteredByTag"] == [name]
    assert seen["filterUrl"] == f"?filter={name}"
    assert seen["filterAfterReload"] == [name, [name]]
    assert seen["noMatch"] == f"No service matches “{name}” and status critical. Clear the filters"
    assert seen["afterClear"] == ["", ""] and seen["focusAfterClear"] == "filter"
    assert seen["sortState"] == ["descending", "?sort=instances&order=desc"]
    assert seen["sortedDescending"]
    assert seen["sortedOrder"] == [name, decoy]  # 3 instances before 1

    # The service's page, reached by keyboard, and the same after a reload.
    assert seen["detailPath"] == f"/ui/services/{name}"
    assert seen["focusAfterNavigation"] == "H1"
    assert seen["detailAfterReload"] == name
    assert seen["instances"] == [f"{name}-1", f"{name}-2", f"{name}-3"]
    assert seen["fieldNames"] == ["Address", "Node", "Tags", "Meta", "Weights"]
    assert seen["fields"] == [
        "127.0.0.1:3001",
        "test-node",
        f"blue<i>x</i>tag-{name}",
        "version = 2.1",
        "passing 3, warning 1",
    ]
    assert "&lt;i&gt;x&lt;/i&gt;" in seen["tagsHtml"]  # markup in a tag is shown, never run
    assert seen["instanceStatuses"] == ["passing", "passing", "maintenance"]
    assert seen["maintenanceReason"] == ["deploying v2"]
    assert seen["checks"] == [
        ["Serf Health Status (node)", "agent", "passing", "Agent alive and reachable", ""],
        ["heartbeat", "ttl", "passing", "none", "beats every 10s"],
    ]
    # The timeline: newest first, with the output, and a strip per instance.
    assert seen["events"][0] == f"check “Service '{name}' check” passing → critical"
    assert seen["eventOutputs"][0] == "connection refused"
    assert "maintenance on" in seen["events"]
    assert f"check “Service '{name}' check” critical → passing" in seen["events"]
    assert seen["events"].count("registered, passing") == 2
    assert "registered, critical" in seen["events"]
    assert len(seen["strips"]) == 3 and seen["strips"][1].startswith(f"{name}-2, last hour: ")
    # The agent started minutes ago: the strip does not claim the hour before.
    assert "not recorded" in seen["strips"][1] and "critical" in seen["strips"][1]
    assert_accessible(seen["detailA11y"])

    # One instance, and its own timeline only.
    assert seen["instancePath"] == f"/ui/services/{name}/instances/test-node/{name}-2"
    assert seen["instanceSections"] == 1
    assert seen["instanceEventsFor"] == [f"{name}-2"]

    # Nodes: health, the node's checks and its services; a node's own deep link.
    assert seen["nodesCurrent"] == "Nodes"
    assert seen["node"]["status"] == "passing"
    assert seen["node"]["checks"] == ["passing Serf Health Status: Agent alive and reachable"]
    assert {f"{name}-1", f"{name}-2", f"{name}-3"} <= set(seen["nodeServices"])
    assert_accessible(seen["nodesA11y"])
    assert seen["oneNode"] == ["test-node", 1]
    assert seen["nodeCount"] >= 2
    assert seen["externalNode"][0] == "address 127.0.0.9 · datacenter dc1"
    assert seen["externalNode"][1].startswith("No node-level checks")
    assert seen["notFound"] == "Not found"


def test_empty_catalog_says_what_to_do() -> None:
    fresh = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off").start()
    try:
        seen = run_ui("empty", fresh.http_url)
    finally:
        fresh.stop()
    assert seen["path"] == "/ui/services"  # /ui redirected to /ui/, shown as the services list
    assert seen["empty"].startswith("No services registered yet")
    assert seen["emptyRows"] == ["consul"]  # the agent's own, still listed
    assert "/v1/agent/service/register" in seen["empty"]
    assert_accessible(seen["a11y"])


def test_the_page_recovers_when_the_agent_restarts() -> None:
    """The restarted agent (an in-memory store) comes back with a lower index than
    the page holds; the page must say it is stale meanwhile and resume by itself."""
    first = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off").start()
    port = first.http_port
    with first.client() as http:
        register(http, {"Name": "before", "ID": "before-1", "Check": {"TTL": "5m"}})
        for n in range(20):  # move the index well above where the new agent starts
            http.put(f"/v1/agent/check/{'pass' if n % 2 else 'fail'}/service:before-1")
    second = None
    ui = subprocess.Popen(
        ["node", "ui.js", "restart", first.http_url],
        cwd=NODE_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert ui.stdin is not None and ui.stdout is not None
    try:
        # "before" and the agent's own "consul" service
        assert json.loads(ui.stdout.readline()) == {"step": "loaded", "rows": 2}
        first.stop()
        ui.stdin.write("stopped\n")
        ui.stdin.flush()
        assert json.loads(ui.stdout.readline()) == {"step": "stale"}
        second = AgentProcess("--dev", "--http", f"127.0.0.1:{port}", "--dns", "off").start()
        with second.client() as http:
            register(http, {"Name": "after", "ID": "after-1", "Check": {"TTL": "5m"}})
        ui.stdin.write("started after\n")
        ui.stdin.flush()
        out, err = ui.communicate(timeout=60)
        assert ui.returncode == 0, err
    finally:
        if ui.poll() is None:
            ui.kill()
        first.stop()
        if second is not None:
            second.stop()
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["errors"] == []
    assert seen["staleText"].startswith("Stale: the agent is unreachable since ")
    assert "showing data from" in seen["staleText"]
    assert seen["rowsWhileStale"] == 2  # the last data stays on screen, marked stale
    assert seen["recoveredMs"] < 5000
    assert seen["liveText"].startswith("Live")
    assert seen["followedAfterRestartMs"] < 8000


def test_the_page_asks_for_a_token_when_acls_deny() -> None:
    """ACLs deny by default and there is no default token: the page says why it
    needs a token, asks again for a bad one, and shows the catalog with a good one."""
    management = "3b0c5d1e-8f2a-4c6b-9d7e-1a2b3c4d5e6f"
    env = {
        "WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": management,
        "WAYPOST_ACL_TOKEN_AGENT": management,
    }
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--acl-default-policy", "deny", env=env
    ).start()
    try:
        with proc.client(headers={"X-Consul-Token": management}) as http:
            register(http, {"Name": "acl-ui", "Port": 80})
            rules = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\nagent_prefix "" { policy = "read" }'
            assert (
                http.put("/v1/acl/policy", json={"Name": "ui-reader", "Rules": rules}).status_code
                == 200
            )
            reader = http.put("/v1/acl/token", json={"Policies": [{"Name": "ui-reader"}]}).json()[
                "SecretID"
            ]
        seen = run_ui("token", proc.http_url, "acl-ui", "not-a-token", reader)
    finally:
        proc.stop()
    assert "ACLs hide some of what this page would show" in seen["firstWhy"]  # a filtered list
    assert seen["focused"] == "token-secret"
    assert "ACL not found" in seen["badWhy"]
    assert seen["formHidden"] is True
    assert "acl-ui" in seen["rows"]
    assert seen["stored"] == reader and reader not in seen["url"]
    assert_accessible(seen["a11y"])
