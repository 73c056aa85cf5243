"""py-consul's kv, session, event and txn APIs, sync and asyncio, against real agents."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator

import consul
import consul.aio
import consul.exceptions
import httpx
import pytest

from ..agentproc import AgentProcess
from ..wait import until


@pytest.fixture
def c(agent: AgentProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


@pytest.fixture(scope="module")
def short_ttl() -> Iterator[AgentProcess]:
    """An agent on sqlite that accepts session TTLs down to 1 s (Consul's floor is 10 s)."""
    proc = AgentProcess(
        "--http", "127.0.0.1:0", "--dns", "off", "--node", "ttl-node", "--session-ttl-min", "1s"
    ).start()
    yield proc
    proc.stop()


def _in_thread(fn: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))  # type: ignore[operator]
    t.start()
    return t, out


# -- KV ---------------------------------------------------------------------------


def test_put_get_cas_flags_delete(c: consul.Consul, unique: str) -> None:
    key = f"{unique}/k"
    assert c.kv.put(key, "v1", flags=7) is True
    _, entry = c.kv.get(key)
    assert (entry["Value"], entry["Flags"], entry["LockIndex"]) == (b"v1", 7, 0)
    assert "Session" not in entry
    assert c.kv.put(key, "v2", cas=0) is False  # 0: create only
    assert c.kv.put(key, "v2", cas=entry["ModifyIndex"] + 100) is False
    assert c.kv.put(key, "v2", cas=entry["ModifyIndex"]) is True
    _, entry2 = c.kv.get(key)
    # Consul stores the request's flags on every write: 0 when it sends none.
    assert entry2["Value"] == b"v2" and entry2["Flags"] == 0
    assert entry2["CreateIndex"] == entry["CreateIndex"] < entry2["ModifyIndex"]
    assert c.kv.put(f"{unique}/new", "x", cas=0) is True
    assert c.kv.delete(key, cas=entry["ModifyIndex"]) is False  # stale
    assert c.kv.delete(key, cas=0) is False  # Consul never deletes for cas=0
    assert c.kv.delete(key, cas=entry2["ModifyIndex"]) is True
    assert c.kv.get(key)[1] is None
    assert c.kv.put(f"{unique}/empty", None) is True
    assert c.kv.get(f"{unique}/empty")[1]["Value"] is None


def test_missing_key_is_404_with_an_index(agent: AgentProcess, unique: str) -> None:
    with agent.client() as http:
        for path in (f"/v1/kv/{unique}/none", f"/v1/kv/{unique}/?recurse", f"/v1/kv/{unique}?keys"):
            r = http.get(path)
            assert r.status_code == 404, path
            assert int(r.headers["x-consul-index"]) >= 1, path
        http.put(f"/v1/kv/{unique}/raw", content=b"\x00\xffbin")
        raw = http.get(f"/v1/kv/{unique}/raw?raw")
        assert raw.content == b"\x00\xffbin"
        # as Consul: a browser may neither sniff a raw value into HTML nor run it
        assert raw.headers["content-type"] == "text/plain"
        assert raw.headers["x-content-type-options"] == "nosniff"
        assert raw.headers["content-security-policy"] == "sandbox"
        assert raw.headers["x-consul-effective-consistency"] == "leader"


def test_recurse_keys_and_separator(c: consul.Consul, unique: str) -> None:
    for key in ("a", "b/1", "b/2", "b/c/3"):
        c.kv.put(f"{unique}/{key}", key)
    _, rows = c.kv.get(f"{unique}/b", recurse=True)
    assert [r["Key"] for r in rows] == [f"{unique}/b/1", f"{unique}/b/2", f"{unique}/b/c/3"]
    _, keys = c.kv.get(f"{unique}/", keys=True, separator="/")
    assert keys == [f"{unique}/a", f"{unique}/b/"]
    _, keys = c.kv.get(f"{unique}/b/", keys=True)
    assert keys == [f"{unique}/b/1", f"{unique}/b/2", f"{unique}/b/c/3"]
    assert c.kv.delete(f"{unique}/b", recurse=True) is True
    assert c.kv.get(f"{unique}/", keys=True)[1] == [f"{unique}/a"]


def test_blocking_get_wakes_for_its_key_or_prefix_only(c: consul.Consul, unique: str) -> None:
    c.kv.put(f"{unique}/watched", "0")
    c.kv.put(f"{unique}/dir/x", "0")
    index, _ = c.kv.get(f"{unique}/watched")
    dir_index, _ = c.kv.get(f"{unique}/dir/", recurse=True)
    key_watch, key_out = _in_thread(lambda: c.kv.get(f"{unique}/watched", index=index, wait="20s"))
    dir_watch, dir_out = _in_thread(
        lambda: c.kv.get(f"{unique}/dir/", recurse=True, index=dir_index, wait="20s")
    )
    time.sleep(0.3)
    c.kv.put(f"{unique}/other", "1")  # neither the key nor under the prefix
    c.kv.put(f"{unique}/dirty", "1")  # shares the prefix's text but not "dir/"
    time.sleep(0.3)
    assert key_watch.is_alive() and dir_watch.is_alive()
    c.kv.put(f"{unique}/dir/y", "1")
    dir_watch.join(5)
    assert not dir_watch.is_alive() and key_watch.is_alive()
    assert int(dir_out[0][0]) > int(dir_index)  # type: ignore[index]
    c.kv.delete(f"{unique}/watched")
    key_watch.join(5)
    new_index, gone = key_out[0]  # type: ignore[misc]
    assert int(new_index) > int(index) and gone is None


def test_value_over_512kb_is_413_and_writes_nothing(agent: AgentProcess, unique: str) -> None:
    with agent.client() as http:
        r = http.put(f"/v1/kv/{unique}/big", content=b"x" * (512 * 1024 + 1))
        assert r.status_code == 413, r.text
        assert "524288 bytes" in r.text and "nothing was written" in r.text
        assert http.get(f"/v1/kv/{unique}/big").status_code == 404
        assert http.put(f"/v1/kv/{unique}/big", content=b"x" * 512 * 1024).json() is True


@pytest.mark.parametrize(
    ("method", "query", "status", "message"),
    [
        ("PUT", "?cas=abc", 400, 'Invalid cas "abc"'),
        ("PUT", "?flags=-1", 400, "Invalid flags"),
        ("PUT", "?cas=1&acquire=x", 400, "Conflicting flags"),
        ("DELETE", "?cas=1&recurse", 400, "Conflicting flags"),
        ("PUT", "?acquire=no-such-session", 500, 'invalid session "no-such-session"'),
        ("PUT", "?dc=dc2", 500, "No path to datacenter"),
    ],
)
def test_bad_kv_requests_are_refused_and_write_nothing(
    agent: AgentProcess, unique: str, method: str, query: str, status: int, message: str
) -> None:
    with agent.client() as http:
        r = http.request(method, f"/v1/kv/{unique}/k{query}", content=b"v")
        assert (r.status_code, message in r.text) == (status, True), r.text
        assert http.get(f"/v1/kv/{unique}/k").status_code == 404
        assert http.put("/v1/kv/", content=b"v").text == "Missing key name"


# -- sessions and locks -------------------------------------------------------------


def test_acquire_release_and_lock_index(c: consul.Consul, unique: str) -> None:
    key = f"{unique}/lock"
    s1 = c.session.create(name="one", lock_delay=0)
    s2 = c.session.create(name="two", lock_delay=0)
    assert c.kv.put(key, "a", acquire=s1) is True
    assert c.kv.put(key, "b", acquire=s2) is False  # one holder
    assert c.kv.put(key, "a2", acquire=s1) is True  # the holder may update
    _, entry = c.kv.get(key)
    assert (entry["Session"], entry["LockIndex"], entry["Value"]) == (s1, 1, b"a2")
    assert c.kv.put(key, "x", release=s2) is False
    assert c.kv.put(key, "free", release=s1) is True
    _, entry = c.kv.get(key)
    assert "Session" not in entry and entry["LockIndex"] == 1
    assert c.kv.put(key, "b", acquire=s2) is True
    assert c.kv.get(key)[1]["LockIndex"] == 2
    # a plain set stores LockIndex 0 and keeps the holder, as Consul's kvsSetTxn
    modified = c.kv.get(key)[1]["ModifyIndex"]
    assert c.kv.put(key, "b") is True
    _, entry = c.kv.get(key)
    assert (entry["Session"], entry["LockIndex"], entry["Value"]) == (s2, 0, b"b")
    assert entry["ModifyIndex"] > modified  # same value, but a write
    assert c.kv.put(key, "c", release=s2) is True
    assert c.kv.put(key, "d", acquire=s1) is True
    assert c.kv.get(key)[1]["LockIndex"] == 1
    _, info = c.session.info(s1)
    assert info["Name"] == "one" and info["Node"] == "test-node"
    assert info["NodeChecks"] == ["serfHealth"] and info["Behavior"] == "release"
    assert {s["ID"] for s in c.session.node("test-node")[1]} >= {s1, s2}
    assert {s["ID"] for s in c.session.list()[1]} >= {s1, s2}
    assert c.session.renew(s1)["ID"] == s1
    assert c.session.destroy(s1) and c.session.destroy(s2)
    assert c.session.info(s1)[1] is None
    with pytest.raises(consul.exceptions.NotFound):
        c.session.renew(s1)


def test_destroy_releases_and_lock_delay_holds_the_key(c: consul.Consul, unique: str) -> None:
    delayed = c.session.create(lock_delay=15)
    quick = c.session.create(lock_delay=0)
    other = c.session.create(lock_delay=0)
    c.kv.put(f"{unique}/d", "x", acquire=delayed)
    c.kv.put(f"{unique}/q", "x", acquire=quick)
    c.session.destroy(delayed)
    c.session.destroy(quick)
    assert "Session" not in c.kv.get(f"{unique}/d")[1]  # released, value kept
    assert c.kv.put(f"{unique}/d", "y", acquire=other) is False  # 15 s lock delay
    assert c.kv.put(f"{unique}/q", "y", acquire=other) is True  # none
    c.session.destroy(other)


def test_behavior_delete_removes_held_keys(c: consul.Consul, unique: str) -> None:
    s = c.session.create(behavior="delete", lock_delay=0)
    c.kv.put(f"{unique}/held", "x", acquire=s)
    c.kv.put(f"{unique}/free", "x")
    c.session.destroy(s)
    assert c.kv.get(f"{unique}/held")[1] is None
    assert c.kv.get(f"{unique}/free")[1] is not None


def test_a_critical_check_invalidates_its_session(c: consul.Consul, unique: str) -> None:
    c.agent.service.register(unique, service_id=unique, check=consul.Check.ttl("60s"))
    check_id = f"service:{unique}"
    c.agent.check.ttl_pass(check_id)
    s = c.session.create(checks=["serfHealth", check_id], lock_delay=0)
    assert c.session.info(s)[1]["NodeChecks"] == ["serfHealth", check_id]
    c.kv.put(f"{unique}/leader", "me", acquire=s)
    index, _ = c.session.info(s)
    c.agent.check.ttl_fail(check_id)
    _, gone = c.session.info(s, index=index, wait="10s")
    assert gone is None
    assert "Session" not in c.kv.get(f"{unique}/leader")[1]
    with pytest.raises(consul.exceptions.ConsulException, match="is in critical state"):
        c.session.create(checks=[check_id])
    with pytest.raises(consul.exceptions.ConsulException, match="Missing check 'nope'"):
        c.session.create(checks=["nope"])


def test_a_node_leaving_the_catalog_invalidates_its_sessions(c: consul.Consul, unique: str) -> None:
    node = f"{unique}-ext"
    c.catalog.register(node, "10.9.9.9")
    s = c.session.create(node=node, checks=[], lock_delay=0)
    c.kv.put(f"{unique}/ext", "x", acquire=s)
    c.catalog.deregister(node)
    until(lambda: c.session.info(s)[1] is None, timeout=5)
    assert "Session" not in c.kv.get(f"{unique}/ext")[1]
    with pytest.raises(consul.exceptions.ConsulException, match="Missing node registration"):
        c.session.create(node=f"{unique}-nowhere")


def test_ttl_twice_over_without_renew_invalidates(short_ttl: AgentProcess) -> None:
    with short_ttl.client() as http:
        ttl_min = http.get("/v1/agent/self").json()["Config"]["SessionTTLMin"]
        assert ttl_min == 1_000_000_000
        too_short = http.put("/v1/session/create", json={"TTL": "0.5s"})
        assert too_short.status_code == 500
        assert too_short.text.startswith("Invalid Session TTL '500000000'")  # Patroni reads this
        sid = http.put("/v1/session/create", json={"TTL": "1s", "Behavior": "delete"}).json()["ID"]
        http.put(f"/v1/kv/ttl/lock?acquire={sid}", content=b"x")
        for _ in range(6):  # 3 s of renewals, past the doubled TTL (2 s): it stays
            time.sleep(0.5)
            assert http.put(f"/v1/session/renew/{sid}").status_code == 200
        assert http.get("/v1/kv/ttl/lock").status_code == 200
        stopped = time.monotonic()
        until(lambda: http.get(f"/v1/session/info/{sid}").json() == [], timeout=5)
        elapsed = time.monotonic() - stopped
        assert 1.5 <= elapsed <= 3.5, elapsed  # 2 x TTL after the last renew
        assert http.get("/v1/kv/ttl/lock").status_code == 404  # Behavior delete


def test_sessions_and_keys_survive_a_restart(short_ttl: AgentProcess) -> None:
    """On sqlite, KV and sessions are durable like the catalog."""
    args = short_ttl.args
    with short_ttl.client() as http:
        sid = http.put("/v1/session/create", json={"Name": "durable"}).json()["ID"]
        assert http.put(f"/v1/kv/durable?acquire={sid}", content=b"kept").json() is True
    short_ttl.stop()
    again = AgentProcess(*args).start()
    try:
        with again.client() as http:
            (entry,) = http.get("/v1/kv/durable").json()
            assert base64.b64decode(entry["Value"]) == b"kept" and entry["Session"] == sid
            assert http.get(f"/v1/session/info/{sid}").json()[0]["Name"] == "durable"
    finally:
        again.stop()
        short_ttl.proc = None  # the fixture's own process is gone


# -- events -------------------------------------------------------------------------


def test_fire_list_filters_and_blocking(c: consul.Consul, unique: str) -> None:
    fired = c.event.fire(f"{unique}-deploy", "v1")
    assert fired["Name"] == f"{unique}-deploy" and fired["Version"] == 1
    c.event.fire(f"{unique}-deploy", "elsewhere", node="^other-node$")  # not for this agent
    c.event.fire(f"{unique}-deploy", "no-svc", service="^no-such-service$")
    index, events = c.event.list(name=f"{unique}-deploy")
    assert [(e["ID"], e["Payload"]) for e in events] == [(fired["ID"], b"v1")]
    waiter, out = _in_thread(lambda: c.event.list(name=f"{unique}-deploy", index=index, wait="10s"))
    c.event.fire(f"{unique}-deploy", "v2", node="test-")
    waiter.join(10)
    new_index, events = out[0]  # type: ignore[misc]
    assert int(new_index) > int(index)
    assert [e["Payload"] for e in events] == [b"v1", b"v2"]
    with pytest.raises(consul.exceptions.BadRequest, match="Invalid filter"):
        c.event.fire(f"{unique}-x", node="(")


# -- transactions -----------------------------------------------------------------


def _op(verb: str, key: str, value: bytes | None = None, **kw: object) -> dict[str, object]:
    op: dict[str, object] = {"Verb": verb, "Key": key, **kw}
    if value is not None:
        op["Value"] = base64.b64encode(value).decode()
    return {"KV": op}


def test_txn_is_atomic_with_consul_shapes(
    c: consul.Consul, agent: AgentProcess, unique: str
) -> None:
    k = f"{unique}/t"
    result = c.txn.put(
        [_op("set", f"{k}/a", b"1"), _op("set", f"{k}/b", b"2"), _op("get", f"{k}/a")]
    )
    kv = [r["KV"] for r in result["Results"]]
    assert [r["Key"] for r in kv] == [f"{k}/a", f"{k}/b", f"{k}/a"]
    assert kv[0]["Value"] is None and base64.b64decode(kv[2]["Value"]) == b"1"
    index = kv[0]["ModifyIndex"]
    assert kv[1]["ModifyIndex"] == index  # one commit
    assert kv[2]["ModifyIndex"] == index  # a read of a key written before it: the commit's
    checks = c.txn.put([_op("check-index", f"{k}/a", Index=index), _op("get-tree", f"{k}/")])
    assert len(checks["Results"]) == 3
    with agent.client() as http:
        failed = http.put(
            "/v1/txn",
            json=[
                _op("set", f"{k}/c", b"3"),
                _op("cas", f"{k}/a", b"x", Index=index + 100),
                _op("check-not-exists", f"{k}/b"),
                _op("frobnicate", f"{k}/a"),
            ],
        )
        assert failed.status_code == 409
        assert failed.json() == {
            "Results": None,
            "Errors": [
                {"OpIndex": 1, "What": f'failed to set key "{k}/a", index is stale'},
                {"OpIndex": 2, "What": f'key "{k}/b" exists'},
                {"OpIndex": 3, "What": 'unknown KV verb "frobnicate"'},
            ],
        }
        assert http.get(f"/v1/kv/{k}/c").status_code == 404  # rolled back
        too_many = http.put("/v1/txn", json=[_op("get", f"{k}/a")] * 65)
        assert too_many.status_code == 413 and "(65 > 64)" in too_many.text
        assert http.put("/v1/txn", content=b"{nope").status_code == 400
    done = c.txn.put([_op("delete-cas", f"{k}/a", Index=index), _op("delete-tree", f"{k}/")])
    assert done["Results"] is None and c.kv.get(f"{k}/", recurse=True)[1] is None


def test_txn_ops_after_a_write_see_the_transactions_index(
    c: consul.Consul, agent: AgentProcess, unique: str
) -> None:
    """As in Consul, a key written earlier in a transaction has the
    transaction's index: a later cas or index check naming the old index fails,
    and a key deleted earlier can be created again with cas 0."""
    k = f"{unique}/t"
    c.kv.put(k, "old")
    old = c.kv.get(k)[1]["ModifyIndex"]
    with agent.client() as http:
        for second in (
            _op("cas", k, b"x", Index=old),
            _op("check-index", k, Index=old),
            _op("delete-cas", k, Index=old),
        ):
            r = http.put("/v1/txn", json=[_op("set", k, b"new"), second])
            assert r.status_code == 409, (second, r.text)
            assert r.json()["Errors"][0]["OpIndex"] == 1
        assert c.kv.get(k)[1]["Value"] == b"old"  # all rolled back
        # alone, each of them passes
        assert http.put("/v1/txn", json=[_op("check-index", k, Index=old)]).status_code == 200
        r = http.put("/v1/txn", json=[_op("delete", k), _op("cas", k, b"again", Index=0)])
        assert r.status_code == 200, r.text
    assert c.kv.get(k)[1]["Value"] == b"again"


def test_txn_results_show_each_key_as_the_transaction_saw_it(
    c: consul.Consul, agent: AgentProcess, unique: str
) -> None:
    """Consul reads each operation's result back inside the transaction: a
    get before a set shows the old entry, a get-tree after a delete lacks the
    key, and what the transaction wrote carries its index."""
    a, b = f"{unique}/seen/a", f"{unique}/seen/b"
    c.kv.put(a, "old")
    old = c.kv.get(a)[1]
    ops = [
        _op("get", a),
        _op("set", a, b"new"),
        _op("get", a),
        _op("get-tree", f"{unique}/seen/"),
        _op("delete", a),
        _op("set", b, b"b"),
        _op("get-tree", f"{unique}/seen/"),
    ]
    with agent.client() as http:
        r = http.put("/v1/txn", json=ops)
    assert r.status_code == 200, r.text
    index = int(r.headers["X-Consul-Index"])
    kv = [x["KV"] for x in r.json()["Results"]]
    assert [x["Key"] for x in kv] == [a, a, a, a, b, b]
    values = [x["Value"] and base64.b64decode(x["Value"]) for x in kv]
    assert values == [b"old", None, b"new", b"new", None, b"b"]
    indexes = [(x["CreateIndex"], x["ModifyIndex"]) for x in kv]
    created = old["CreateIndex"]
    assert indexes == [(created, old["ModifyIndex"])] + [(created, index)] * 3 + [(index, index)] * 2
    assert c.kv.get(b)[1]["ModifyIndex"] == index and c.kv.get(a)[1] is None


def test_txn_locks(c: consul.Consul, unique: str) -> None:
    s = c.session.create(lock_delay=0)
    k = f"{unique}/txlock"
    (locked,) = c.txn.put([_op("lock", k, b"me", Session=s)])["Results"]
    assert locked["KV"]["Session"] == s and locked["KV"]["LockIndex"] == 1
    c.txn.put([_op("check-session", k, Session=s), _op("unlock", k, b"", Session=s)])
    with pytest.raises(consul.exceptions.ConsulException, match="409"):
        c.txn.put([_op("check-session", k, Session=s)])
    c.session.destroy(s)


# -- asyncio -----------------------------------------------------------------------


async def test_asyncio_kv_session_event_txn(agent: AgentProcess, unique: str) -> None:
    c = consul.aio.Consul(host="127.0.0.1", port=agent.http_port)
    try:
        assert await c.kv.put(f"{unique}/a", "1") is True
        index, entry = await c.kv.get(f"{unique}/a")
        assert entry["Value"] == b"1"
        waiter = asyncio.ensure_future(c.kv.get(f"{unique}/a", index=index, wait="10s"))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await c.kv.put(f"{unique}/a", "2")
        _, entry = await asyncio.wait_for(waiter, 10)
        assert entry["Value"] == b"2"
        s = await c.session.create(lock_delay=0)
        assert await c.kv.put(f"{unique}/lock", "x", acquire=s) is True
        assert (await c.session.info(s))[1]["ID"] == s
        assert await c.session.destroy(s) is True
        event = await c.event.fire(f"{unique}-aio", "p")
        assert (await c.event.list(name=f"{unique}-aio"))[1][0]["ID"] == event["ID"]
        result = await c.txn.put([_op("get", f"{unique}/a")])
        assert base64.b64decode(result["Results"][0]["KV"]["Value"]) == b"2"
    finally:
        await c.close()


def test_other_datacenter_session_is_refused(agent: AgentProcess) -> None:
    with agent.client() as http:
        r = http.put("/v1/session/create?dc=dc2", json={})
        assert (r.status_code, r.text[:21]) == (500, "No path to datacenter")
        assert isinstance(httpx.get(f"{agent.http_url}/v1/session/list").json(), list)
