"""The web UI in headless Firefox too (Marionette, see firefox.py): every view
renders and follows a live change. The thorough checks run in Chromium
(test_ui_browser.py); this one catches what only Firefox would break."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..agentproc import AgentProcess
from . import firefox

pytest.importorskip("marionette_driver", reason="the dev extra installs marionette-driver")


def until_js(client: Any, script: str, timeout: float = 10) -> Any:
    """Run `script` (a JS function body returning a value) until it is truthy."""
    from marionette_driver import Wait

    return Wait(client, timeout=timeout).until(lambda c: c.execute_script(script))


def register(http: httpx.Client, body: dict[str, Any]) -> None:
    assert http.put("/v1/agent/service/register", json=body).status_code == 200


def test_every_view_in_firefox(agent: AgentProcess, unique: str) -> None:
    if not firefox.available():
        pytest.fail("Firefox is missing: `make test` installs it (Debian package firefox-esr)")
    name = f"ff-{unique}"
    with agent.client() as http:
        register(http, {"Name": name, "ID": f"{name}-1", "Tags": ["t1"], "Check": {"TTL": "5m"}})
        with firefox.firefox() as ff:
            ff.navigate(f"{agent.http_url}/ui")
            row = f"document.querySelector('tr.service[data-name=\"{name}\"]')"
            assert until_js(ff, f"return {row}?.dataset.status") == "critical"
            http.put(f"/v1/agent/check/pass/service:{name}-1")
            assert until_js(ff, f"return {row}?.dataset.status === 'passing'")
            assert ff.get_url().endswith("/ui/services")

            ff.navigate(f"{agent.http_url}/ui/services/{name}")  # a deep link, loaded cold
            shown = until_js(
                ff,
                "const i = document.querySelector('section.instance');"
                "const e = document.querySelectorAll('#events li');"
                "return i && e.length === 2 && [i.dataset.id, i.dataset.status,"
                " [...e].map((li) => li.dataset.kind), document.querySelector('.strip') !== null];",
            )
            assert shown == [f"{name}-1", "passing", ["check", "registered"], True]

            ff.navigate(f"{agent.http_url}/ui/nodes")
            ids = until_js(
                ff,
                "const n = document.querySelector('section.node[data-node=\"test-node\"]');"
                "return n && [...n.querySelectorAll('tr.node-service')].map((r) => r.dataset.id);",
            )
            assert f"{name}-1" in ids

            # The mesh: who may call the service, live; the intentions list, filtered.
            caller = f"{name}-caller"
            exact = {"source": caller, "destination": name}
            http.put("/v1/connect/intentions/exact", params=exact, json={"Action": "deny"})
            ff.navigate(f"{agent.http_url}/ui/services/{name}")
            peer = f"document.querySelector('#callers li[data-peer=\"{caller}\"]')"
            assert until_js(ff, f"return {peer}?.dataset.action") == "deny"
            http.put("/v1/connect/intentions/exact", params=exact, json={"Action": "allow"})
            assert until_js(ff, f"return {peer}?.dataset.action === 'allow'")
            ff.navigate(f"{agent.http_url}/ui/intentions?filter={caller}")
            listed = until_js(
                ff,
                "const r = document.querySelectorAll('tr.intention');"
                "return r.length && [...r].map((tr) => tr.dataset.source + '>' + tr.dataset.destination);",
            )
            assert listed == [f"{caller}>{name}"]
            http.delete("/v1/connect/intentions/exact", params=exact)
            state = ff.execute_script("return document.querySelector('#connection').dataset.state")
            assert state == "live"
