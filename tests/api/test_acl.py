"""ACLs end to end: a real agent with default deny, raw HTTP and py-consul's ACL API.

One agent for the module (ACLs on, default deny, an initial management token
and a default token from the environment, never from a flag); tests use names
of their own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import consul
import consul.exceptions
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from ..agentproc import AgentProcess

MGMT = "5b7c8f2a-0d7e-4c55-9d5e-3a4c1b0e9f01"
DEFAULT = "9d3f6a10-27b4-4d2e-8f1a-5c6b7d8e9f02"


@pytest.fixture(scope="module")
def acl_agent() -> Iterator[AgentProcess]:
    env = {"WAYPOST_ACL_TOKEN_INITIAL_MANAGEMENT": MGMT, "WAYPOST_ACL_TOKEN_DEFAULT": DEFAULT}
    env["WAYPOST_ACL_TOKEN_AGENT"] = MGMT  # its own node's writes (tests/agent/test_agent_token.py)
    proc = AgentProcess(
        "--dev",
        "--http",
        "127.0.0.1:0",
        "--dns",
        "127.0.0.1:0",
        "--node",
        "acl-node",
        "--acl-default-policy",
        "deny",
        env=env,
    ).start()
    assert MGMT not in " ".join(proc.args), "the secret must not be on the command line"
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


@pytest.fixture(scope="module")
def admin(acl_agent: AgentProcess) -> Iterator[httpx.Client]:
    with acl_agent.client(headers={"X-Consul-Token": MGMT}) as client:
        yield client


@pytest.fixture(scope="module")
def default_token(admin: httpx.Client) -> str:
    """The agent's default token (named by its environment), created here: what
    requests without a token and DNS may read. Its AccessorID is returned."""
    make_token(admin, 'node_prefix "" { policy = "read" }', secret=DEFAULT)
    return str(
        admin.get("/v1/acl/token/self", headers={"X-Consul-Token": DEFAULT}).json()["AccessorID"]
    )


def make_token(admin: httpx.Client, rules: str, secret: str = "") -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    r = admin.put("/v1/acl/policy", json={"Name": name, "Rules": rules})
    assert r.status_code == 200, r.text
    body = {"Description": name, "Policies": [{"Name": name}]}
    if secret:
        body["SecretID"] = secret
    r = admin.put("/v1/acl/token", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["SecretID"])


def register(client: httpx.Client, name: str, **params: str) -> httpx.Response:
    body = {"Name": name, "ID": name, "Address": "10.1.2.3", "Port": 80}
    return client.put("/v1/agent/service/register", json=body, params=params)


def test_answers_name_the_default_deny_policy(
    acl_agent: AgentProcess, admin: httpx.Client, unique: str
) -> None:
    """`X-Consul-Default-ACL-Policy: deny` on a refusal and on an answer
    (tools read it to tell a token without rights from a bad one)."""
    with acl_agent.client() as anonymous:
        refused = register(anonymous, unique)
    assert refused.status_code == 403
    read = admin.get(f"/v1/health/service/{unique}")
    for r in (refused, read):
        assert r.headers["x-consul-default-acl-policy"] == "deny"


def test_default_deny_refuses_a_write_naming_the_permission_and_writes_nothing(
    acl_agent: AgentProcess, admin: httpx.Client, default_token: str, unique: str
) -> None:
    with acl_agent.client() as anonymous:  # no token sent: the agent's default token
        r = register(anonymous, unique)
    assert r.status_code == 403
    assert r.text == (
        f"Permission denied: token with AccessorID '{default_token}' "
        f"lacks permission 'service:write' on \"{unique}\""
    )
    assert unique not in admin.get("/v1/catalog/services").json()


def test_a_per_service_token_writes_its_service_only_from_any_token_source(
    acl_agent: AgentProcess, admin: httpx.Client, unique: str
) -> None:
    secret = make_token(admin, f'service "{unique}" {{ policy = "write" }}')
    with acl_agent.client() as c:
        assert register(c, unique, token=secret).status_code == 200  # ?token=
        bearer = {"Authorization": f"Bearer {secret}"}
        r = c.put(f"/v1/agent/service/deregister/{unique}", headers=bearer)
        assert r.status_code == 200
        c.headers["X-Consul-Token"] = secret
        assert register(c, unique).status_code == 200
        other = register(c, f"{unique}-other")
        assert other.status_code == 403 and f"'service:write' on \"{unique}-other\"" in other.text
        # a catalog registration needs node:write too
        body = {"Node": "ext-1", "Address": "10.0.0.1", "Service": {"Service": unique}}
        r = c.put("/v1/catalog/register", json=body)
        assert r.status_code == 403 and "'node:write' on \"ext-1\"" in r.text
    assert admin.get(f"/v1/catalog/service/{unique}").json()[0]["ServiceID"] == unique
    assert "ext-1" not in [n["Node"] for n in admin.get("/v1/catalog/nodes").json()]


def test_list_reads_are_filtered_and_say_so(
    acl_agent: AgentProcess, admin: httpx.Client, unique: str
) -> None:
    shown, hidden = f"{unique}-pub", f"{unique}-secret"
    for name in (shown, hidden):
        assert register(admin, name).status_code == 200
    secret = make_token(
        admin,
        f'service_prefix "{shown}" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}',
    )
    with acl_agent.client(headers={"X-Consul-Token": secret}) as c:
        services = c.get("/v1/catalog/services")
        assert list(services.json()) == [shown]
        assert services.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        assert [r["Service"]["ID"] for r in c.get(f"/v1/health/service/{shown}").json()] == [shown]
        assert (
            "X-Consul-Results-Filtered-By-ACLs" not in c.get(f"/v1/health/service/{shown}").headers
        )
        secret_rows = c.get(f"/v1/health/service/{hidden}")
        assert (
            secret_rows.json() == []
            and secret_rows.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        )
        assert list(c.get("/v1/agent/services").json()) == [shown]
    full = admin.get("/v1/catalog/services")
    assert {shown, hidden} <= set(full.json())
    assert "X-Consul-Results-Filtered-By-ACLs" not in full.headers


def test_a_token_change_reaches_cached_answers(
    acl_agent: AgentProcess, admin: httpx.Client, unique: str
) -> None:
    assert register(admin, unique).status_code == 200
    secret = make_token(admin, 'node_prefix "" { policy = "read" }')
    with acl_agent.client(headers={"X-Consul-Token": secret}) as c:
        assert c.get(f"/v1/health/service/{unique}").json() == []
        token = admin.get("/v1/acl/token/self", headers={"X-Consul-Token": secret}).json()
        policy = admin.put(
            "/v1/acl/policy",
            json={"Name": f"{unique}-r", "Rules": f'service "{unique}" {{ policy = "read" }}'},
        ).json()
        links = [*token["Policies"], {"ID": policy["ID"]}]
        r = admin.put(f"/v1/acl/token/{token['AccessorID']}", json={"Policies": links})
        assert r.status_code == 200, r.text
        assert len(c.get(f"/v1/health/service/{unique}").json()) == 1  # same index, new rights


def test_unknown_tokens_are_refused(acl_agent: AgentProcess) -> None:
    with acl_agent.client(headers={"X-Consul-Token": "not-a-token"}) as c:
        r = c.get("/v1/catalog/services")
    assert (r.status_code, r.text) == (403, "ACL not found")


def test_acl_endpoints_need_acl_permissions(
    acl_agent: AgentProcess, admin: httpx.Client, default_token: str
) -> None:
    reader = make_token(admin, 'acl = "read"')
    with acl_agent.client(headers={"X-Consul-Token": reader}) as c:
        tokens = c.get("/v1/acl/tokens")
        assert tokens.status_code == 200
        assert {t["SecretID"] for t in tokens.json()} == {"<hidden>"}  # read, not write
        r = c.put("/v1/acl/policy", json={"Name": "nope"})
        assert r.status_code == 403 and "'acl:write'" in r.text
        assert c.get("/v1/acl/token/self").json()["SecretID"] == reader
    with acl_agent.client() as anonymous:
        assert anonymous.get("/v1/acl/policies").status_code == 403
    bad = admin.put(
        "/v1/acl/policy", json={"Name": "bad", "Rules": 'servce "x" { policy = "read" }'}
    )
    assert bad.status_code == 400 and 'unknown resource "servce"' in bad.text
    assert admin.delete("/v1/acl/policy/00000000-0000-0000-0000-000000000001").status_code == 400


def test_bootstrap_happens_once() -> None:
    proc = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--acl-default-policy", "deny"
    ).start()
    try:
        c = consul.Consul(host="127.0.0.1", port=proc.http_port)
        token = c.acl.bootstrap()
        assert token["Policies"] == [
            {"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}
        ]
        with pytest.raises(consul.exceptions.ACLPermissionDenied, match="no longer allowed"):
            c.acl.bootstrap()
        boss = consul.Consul(host="127.0.0.1", port=proc.http_port, token=token["SecretID"])
        assert boss.acl.token.read_self()["AccessorID"] == token["AccessorID"]
    finally:
        proc.stop()


def test_py_consul_acl_api_and_token(
    acl_agent: AgentProcess, default_token: str, unique: str
) -> None:
    boss = consul.Consul(host="127.0.0.1", port=acl_agent.http_port, token=MGMT)
    rules = {"service": {unique: {"policy": "write"}}, "node_prefix": {"": {"policy": "read"}}}
    policy = boss.acl.policy.create(f"{unique}-w", rules=rules)
    assert boss.acl.policy.read(policy["ID"])["Name"] == f"{unique}-w"
    token = boss.acl.token.create(description="py-consul", policies_name=[f"{unique}-w"])
    assert token["Policies"][0]["ID"] == policy["ID"]
    assert any(t["AccessorID"] == token["AccessorID"] for t in boss.acl.token.list())
    mine = consul.Consul(host="127.0.0.1", port=acl_agent.http_port, token=token["SecretID"])
    assert mine.agent.service.register(unique, service_id=unique, port=80)
    assert [r["Service"]["ID"] for r in mine.health.service(unique)[1]] == [unique]
    with pytest.raises(consul.exceptions.ACLPermissionDenied):
        mine.agent.service.register(f"{unique}-x", port=80)
    anonymous = consul.Consul(host="127.0.0.1", port=acl_agent.http_port)
    with pytest.raises(consul.exceptions.ACLPermissionDenied):
        anonymous.acl.policy.list()
    assert boss.acl.token.delete(token["AccessorID"])
    with pytest.raises(consul.exceptions.ACLPermissionDenied, match="ACL not found"):
        mine.agent.services()


def test_acl_endpoints_without_acls_say_disabled(agent: AgentProcess) -> None:
    with pytest.raises(consul.exceptions.ACLDisabled):
        consul.Consul(host="127.0.0.1", port=agent.http_port).acl.policy.list()


def test_the_uis_token_seam(
    agent: AgentProcess, acl_agent: AgentProcess, default_token: str
) -> None:
    """token/self: 401 without ACLs (never ask), 403 for a bad token (ask), 200 for a good one."""
    assert httpx.get(f"{agent.http_url}/v1/acl/token/self").status_code == 401
    bad = httpx.get(f"{acl_agent.http_url}/v1/acl/token/self", headers={"X-Consul-Token": "x"})
    assert bad.status_code == 403
    good = httpx.get(f"{acl_agent.http_url}/v1/acl/token/self", headers={"X-Consul-Token": MGMT})
    assert good.status_code == 200 and good.json()["Policies"][0]["Name"] == "global-management"


def test_dns_answers_with_the_default_token(
    acl_agent: AgentProcess, admin: httpx.Client, default_token: str, unique: str
) -> None:
    shown, hidden = f"{unique}-dns", f"{unique}-nodns"
    for name in (shown, hidden):
        assert register(admin, name).status_code == 200

    def ask(name: str) -> dns.message.Message:
        query = dns.message.make_query(f"{name}.service.consul", dns.rdatatype.A)
        return dns.query.udp(query, acl_agent.dns_host, port=acl_agent.dns_port, timeout=5)

    assert ask(shown).rcode() == dns.rcode.NXDOMAIN  # the default token may read nodes only
    name = f"{unique}-dns-read"
    policy = admin.put(
        "/v1/acl/policy", json={"Name": name, "Rules": f'service "{shown}" {{ policy = "read" }}'}
    ).json()
    token = admin.get(f"/v1/acl/token/{default_token}").json()
    links = [*token["Policies"], {"ID": policy["ID"]}]
    assert admin.put(f"/v1/acl/token/{default_token}", json={"Policies": links}).status_code == 200
    answer = ask(shown)  # the token's change reached the DNS cache
    assert [a.address for rrset in answer.answer for a in rrset] == ["10.1.2.3"]
    assert ask(hidden).rcode() == dns.rcode.NXDOMAIN


def test_cli_reads_with_consul_http_token(
    acl_agent: AgentProcess, admin: httpx.Client, default_token: str, unique: str
) -> None:
    assert register(admin, unique).status_code == 200
    cmd = [sys.executable, "-m", "waypost.cli.main", "services"]
    env = {"CONSUL_HTTP_ADDR": acl_agent.http_url.removeprefix("http://")}
    import os

    seen = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env, "CONSUL_HTTP_TOKEN": MGMT},
    )
    assert seen.returncode == 0, seen.stderr
    assert unique in seen.stdout
    blind = subprocess.run(
        cmd, capture_output=True, text=True, timeout=30, env={**os.environ, **env}
    )
    assert unique not in blind.stdout


def test_kv_sessions_and_events_under_acls(
    acl_agent: AgentProcess, admin: httpx.Client, default_token: str, unique: str
) -> None:
    rules = (
        f'key_prefix "{unique}/app/" {{ policy = "write" }}\n'
        f'session_prefix "" {{ policy = "write" }}\n'
        f'event_prefix "{unique}" {{ policy = "write" }}'
    )
    secret = make_token(admin, rules)
    for key in (f"{unique}/app/a", f"{unique}/secret"):
        assert admin.put(f"/v1/kv/{key}", content=b"v").status_code == 200
    with acl_agent.client(headers={"X-Consul-Token": secret}) as c:
        assert c.put(f"/v1/kv/{unique}/app/b", content=b"v").json() is True
        denied = c.put(f"/v1/kv/{unique}/secret", content=b"x")
        assert denied.status_code == 403 and f"'key:write' on \"{unique}/secret\"" in denied.text
        assert c.get(f"/v1/kv/{unique}/secret").status_code == 403
        tree = c.get(f"/v1/kv/{unique}/", params={"recurse": ""})
        assert [e["Key"] for e in tree.json()] == [f"{unique}/app/a", f"{unique}/app/b"]
        assert tree.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        keys = c.get(f"/v1/kv/{unique}/", params={"keys": ""}).json()
        assert keys == [f"{unique}/app/a", f"{unique}/app/b"]
        assert c.delete(f"/v1/kv/{unique}/", params={"recurse": ""}).status_code == 403
        txn = [{"KV": {"Verb": "set", "Key": f"{unique}/secret", "Value": "eA=="}}]
        assert c.put("/v1/txn", json=txn).status_code == 403
        session = c.put("/v1/session/create", json={"Name": "s"}).json()["ID"]
        assert c.put(f"/v1/event/fire/{unique}-deploy").status_code == 200
        assert c.put("/v1/event/fire/other").status_code == 403
        assert c.post(f"/v1/kv/{unique}/app/c", content=b"v").status_code == 405  # PUT only
    assert admin.get(f"/v1/kv/{unique}/secret", params={"raw": ""}).content == b"v"
    assert admin.put(f"/v1/session/destroy/{session}").json() is True


def test_intentions_need_intentions_rights_on_their_destination(
    acl_agent: AgentProcess, admin: httpx.Client, default_token: str, unique: str
) -> None:
    db, web = f"{unique}-db", f"{unique}-web"
    secret = make_token(admin, f'service "{db}" {{ policy = "read" intentions = "write" }}')
    exact = "/v1/connect/intentions/exact"
    with acl_agent.client(headers={"X-Consul-Token": secret}) as c:
        mine = c.put(exact, params={"source": web, "destination": db}, json={"Action": "allow"})
        assert mine.status_code == 200, mine.text
        theirs = c.put(exact, params={"source": db, "destination": web}, json={"Action": "deny"})
        assert theirs.status_code == 403 and f"'intentions:write' on \"{web}\"" in theirs.text
    assert admin.put(
        exact, params={"source": db, "destination": web}, json={"Action": "deny"}
    ).json()
    reader = make_token(admin, f'service "{db}" {{ policy = "read" }}')  # implies intentions:read
    with acl_agent.client(headers={"X-Consul-Token": reader}) as c:
        listed = c.get("/v1/connect/intentions")
        assert [i["DestinationName"] for i in listed.json()] == [db]
        assert listed.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"


def test_the_uis_mesh_view_shows_only_what_the_token_may_read(
    acl_agent: AgentProcess, admin: httpx.Client, unique: str
) -> None:
    """/v1/internal/ui/intentions: services need service:read, intentions and
    the decisions on a destination need intentions:read on it."""
    front, back, secret = f"{unique}-front", f"{unique}-back", f"{unique}-secret"
    other = f"{unique}-other"  # calls front by the default: a decision on front, so hidden
    for name in (front, back, secret, other):
        admin.put("/v1/agent/service/register", json={"Name": name}).raise_for_status()
    for source, destination, action in (
        (front, back, "deny"),
        ("*", secret, "deny"),
        (back, front, "allow"),
    ):
        r = admin.put(
            "/v1/connect/intentions/exact",
            json={"Action": action},
            params={"source": source, "destination": destination},
        )
        assert r.status_code == 200, r.text
    rules = (
        f'service "{front}" {{ policy = "read" intentions = "deny" }}\n'
        f'service "{back}" {{ policy = "read" }}\n'
        f'service "{other}" {{ policy = "read" }}'
    )
    token = make_token(admin, rules)
    path, query = "/v1/internal/ui/intentions", {"service": front}
    with acl_agent.client(headers={"X-Consul-Token": token}) as c:
        seen = c.get(path, params=query)
    assert seen.status_code == 200, seen.text
    view = seen.json()
    assert (
        view["Services"] == [back, front, other]
        and seen.headers["X-Consul-Results-Filtered-By-ACLs"]
    )
    assert [(i["SourceName"], i["DestinationName"]) for i in view["Intentions"]] == [(front, back)]
    # front -> back: denied by that intention; front -> other: denied by the default,
    # which follows the ACL default policy (deny here), as the mesh enforces it
    assert view["Cells"] == [[1, 0, 0, 0], [1, 2, 0, -1]]
    full = admin.get(path, params=query).json()
    assert full["DefaultAllow"] is False
    named = {(full["Services"][s], full["Services"][d]): a for s, d, a, _ in full["Cells"]}
    assert named[(back, front)] == 1 and named[(front, secret)] == 0


def test_tokens_survive_kill_9(tmp_path: Path) -> None:
    """ACL records are catalog records: durable before the answer, replayed at start-up."""
    data = str(tmp_path / "data")
    args = (
        "--data-dir",
        data,
        "--http",
        "127.0.0.1:0",
        "--dns",
        "off",
        "--acl-default-policy",
        "deny",
    )
    first = AgentProcess(*args).start()
    boss = httpx.put(f"{first.http_url}/v1/acl/bootstrap", timeout=30).json()["SecretID"]
    first.kill()
    again = AgentProcess(*args).start()
    try:
        r = httpx.get(
            f"{again.http_url}/v1/acl/token/self", headers={"X-Consul-Token": boss}, timeout=30
        )
        assert r.status_code == 200 and r.json()["SecretID"] == boss
        assert httpx.put(f"{again.http_url}/v1/acl/bootstrap", timeout=30).status_code == 403
    finally:
        again.stop()


@pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (make test installs it)"
)
def test_node_consul_client_with_tokens(
    acl_agent: AgentProcess, default_token: str, unique: str
) -> None:
    node_dir = Path(__file__).parent.parent / "node"
    result = subprocess.run(
        ["node", "acl.js", str(acl_agent.http_port), unique, MGMT],
        cwd=node_dir, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["anonymous"].startswith("403 ") and "'service:write'" in seen["anonymous"]
    assert (
        seen["bootstrapAgain"].startswith("403 ") and "no longer allowed" in seen["bootstrapAgain"]
    )
    assert seen["admin"] == "ok"
    assert seen["perCall"] == "ok"
