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
from ..api.test_acl import make_token
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
        ["web", "db", "deny", "9", "web goes through api", "", "Delete"],
        ["* (any service)", "db", "allow", "8", "none", "owner=dba", "Delete"],
        ["api", "* (any service)", "deny", "6", "none", "", "Delete"],
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
    assert seen["filteredAfterReload"] == [
        "cache",
        [["cache", "web", "deny", "9", "no", "", "Delete"]],
    ]
    # Made from the form, refused with the agent's reason, deleted on the second press.
    assert seen["created"] == [
        "Saved: cache → api, deny.",
        ["cache", "api", "deny", "9", "made in the UI", "", "Delete"],
    ]
    assert seen["refused"].startswith("The agent refused (HTTP 400): ")
    assert 'the wildcard is "*" alone' in seen["refused"]
    assert seen["armed"] == ["Confirm delete", "Confirm: Delete the intention cache → web"]
    assert seen["stillThere"] == 1
    assert seen["deleted"] == ["Deleted: cache → web.", "list-h"]
    assert_accessible(seen["editA11y"])
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


def test_writing_an_intention_asks_for_a_token_that_may(tmp_path: Path) -> None:
    """ACLs deny by default: a token that may read intentions sees them, and
    saving one shows the token form with the agent's reason until a token
    with intentions:write on the destination is given."""
    management = "0d1c4a52-7f3e-4b6a-9c2d-1e5f6a7b8c90"
    env = {"WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": management}
    args = ("--dev", "--http", "127.0.0.1:0", "--dns", "off", "--acl-default-policy", "deny")
    proc = AgentProcess(*args, env=env).start()
    try:
        with proc.client(headers={"X-Consul-Token": management}) as admin:
            body = {"Action": "allow"}
            params = {"source": "api", "destination": "db"}
            admin.put("/v1/connect/intentions/exact", params=params, json=body).raise_for_status()
            reader = make_token(admin, 'service_prefix "" { policy = "read" }')
            writer = make_token(admin, 'service "db" { policy = "read" intentions = "write" }')
        seen = run_ui("meshToken", proc.http_url, reader, writer)
    finally:
        proc.stop()
    assert seen["rows"] == 1
    assert "lacks permission 'intentions:write' on \"db\"" in seen["why"]
    assert seen["refused"].startswith("The agent refused (HTTP 403)")
    assert seen["saved"] == "Saved: web → db, allow."
