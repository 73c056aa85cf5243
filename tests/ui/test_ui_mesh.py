"""The UI's mesh view in headless Chromium, on an agent of its own (its
intentions would change every other test's decisions on the shared agent):
the intentions list, the matrix of who may call whom (each cell checked
against the agent's /v1/connect/intentions/check), live changes, the filter
in the URL, and a service's callers and callees."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..agentproc import AgentProcess
from .test_ui_browser import CHROMIUM, assert_accessible, run_ui

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (make test installs it)"
)


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs it (Debian package chromium)")


@pytest.fixture(scope="module")
def mesh_agent() -> Iterator[AgentProcess]:
    proc = AgentProcess("--dev", "--http", "127.0.0.1:0", "--dns", "off").start()
    yield proc
    proc.stop()


def seed_mesh(http: httpx.Client) -> None:
    for n, name in enumerate(("web", "api", "db", "cache")):
        body = {"Name": name, "Port": 3000 + n, "Check": {"TTL": "5m", "Status": "passing"}}
        assert http.put("/v1/agent/service/register", json=body).status_code == 200
    sidecar = {
        "Name": "web-sidecar-proxy",
        "Kind": "connect-proxy",
        "Port": 21000,
        "Proxy": {"DestinationServiceName": "web"},
    }
    assert http.put("/v1/agent/service/register", json=sidecar).status_code == 200
    for source, destination, body in (
        ("web", "db", {"Action": "deny", "Description": "web goes through api"}),
        ("*", "db", {"Action": "allow", "Meta": {"owner": "dba"}}),
        ("api", "*", {"Action": "deny"}),
    ):
        r = http.put(
            "/v1/connect/intentions/exact",
            params={"source": source, "destination": destination},
            json=body,
        )
        assert r.status_code == 200, r.text


def test_mesh_view(mesh_agent: AgentProcess) -> None:
    with mesh_agent.client() as http:
        seed_mesh(http)
    seen = run_ui("mesh", mesh_agent.http_url)

    assert seen["current"] == "Intentions"
    assert seen["policy"] == "When no intention matches a pair: allow."
    assert seen["rows"] == [
        ["web", "db", "deny", "9", "web goes through api", ""],
        ["* (any service)", "db", "allow", "8", "none", "owner=dba"],
        ["api", "* (any service)", "deny", "6", "none", ""],
    ]
    # The matrix: no sidecar, no `consul`; every cell what the agent enforces.
    assert seen["headers"] == ["api", "cache", "db", "web"]
    assert len(seen["cells"]) == 12
    assert [c[:3] for c in seen["cells"]] == seen["checked"]
    by_pair = {(c[0], c[1]): c[2:4] for c in seen["cells"]}
    assert by_pair[("web", "db")] == ["deny", "intention"]
    assert by_pair[("cache", "db")] == ["allow", "intention"]
    assert by_pair[("api", "db")] == ["allow", "intention"]  # */db (8) beats api/* (6)
    assert by_pair[("api", "web")] == ["deny", "intention"]
    assert by_pair[("web", "cache")] == ["allow", "default"]
    assert_accessible(seen["a11y"])
    assert seen["tabsToFilter"] <= 8
    # Live, filtered, and the filter survives a reload.
    assert "deny" in seen["liveCell"] and "by-intention" in seen["liveCell"]
    assert seen["filterUrl"] == "?filter=cache"
    assert seen["filteredAfterReload"] == ["cache", [["cache", "web", "deny", "9", "no", ""]]]
    # db's page: its callers, each with the intention that decides; its callees by default.
    assert seen["callers"] == [
        ["api", "allow", "allow api by the intention * → db"],
        ["cache", "allow", "allow cache by the intention * → db"],
        ["web", "deny", "deny web by the intention web → db"],
    ]
    assert seen["callees"] == [
        ["(default)", "allow", "allow 3 other services, by the default policyapi, cache, web"]
    ]
    assert_accessible(seen["serviceA11y"])
    assert seen["calleesAfter"][0] == ["cache", "deny", "deny cache by the intention db → cache"]
