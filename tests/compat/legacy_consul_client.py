"""Drive a waypost agent with the old `consul` libraries, as their users call them.

Run by tests/compat/test_legacy_consul.py inside a venv that holds python-consul
1.1.0 or python-consul2 0.1.5 (both install the top-level `consul` package, like
py-consul, so each has its own venv). Not imported by pytest: it runs in that venv.

    python legacy_consul_client.py HOST PORT PREFIX

Prints `ok <step>` for every step that held; the first that does not raises
(exit 1, traceback on stderr). The test compares the list of steps.
"""

from __future__ import annotations

import base64
import http.server
import sys
import threading
import time

import consul

HOST, PORT, P = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = consul.Consul(host=HOST, port=PORT)


def ok(step, cond, detail=None):
    if not cond:
        raise AssertionError(f"{step}: {detail!r}")
    print("ok", step, flush=True)


def later(delay, fn, *args, **kwargs):
    t = threading.Timer(delay, fn, args, kwargs)
    t.start()
    return t


def until(step, fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return ok(step, value, f"not before {timeout}s")
        time.sleep(0.1)


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"up")

    def log_message(self, *args):
        pass


def backend():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def agent_self():
    me = c.agent.self()
    ok("agent.self", me["Config"]["NodeName"] and me["Config"]["Datacenter"], me)
    members = c.agent.members()
    ok("agent.members", me["Config"]["NodeName"] in [m["Name"] for m in members], members)
    return me["Config"]["NodeName"], me["Config"]["Datacenter"]


def register(port):
    s = c.agent.service
    ok(
        "register http",
        s.register(
            P + "-web",
            service_id=P + "-web-1",
            address="127.0.0.1",
            port=port,
            tags=["v1"],
            check=consul.Check.http(
                f"http://127.0.0.1:{port}/", "1s", timeout="1s", deregister="10m"
            ),
        ),
    )
    ok(
        "register tcp",
        s.register(
            P + "-tcp",
            service_id=P + "-tcp-1",
            address="127.0.0.1",
            port=port,
            check=consul.Check.tcp("127.0.0.1", port, "1s"),
        ),
    )
    ok(
        "register ttl",
        s.register(
            P + "-ttl",
            service_id=P + "-ttl-1",
            port=1,
            check=consul.Check.ttl("30s"),
            token="ignored-without-acls",
        ),
    )
    services = c.agent.services()
    ok("agent.services", {P + "-web-1", P + "-tcp-1", P + "-ttl-1"} <= set(services), services)
    ok("agent.services tags", services[P + "-web-1"]["Tags"] == ["v1"], services[P + "-web-1"])
    ok("agent.checks", "service:" + P + "-ttl-1" in c.agent.checks(), c.agent.checks())


def probes_pass():
    def passing(name):
        _, checks = c.health.checks(name)
        return checks and all(ch["Status"] == "passing" for ch in checks)

    until("http check passes", lambda: passing(P + "-web"))
    until("tcp check passes", lambda: passing(P + "-tcp"))


def ttl_and_blocking(node):
    name, check = P + "-ttl", "service:" + P + "-ttl-1"
    index, nodes = c.health.service(name, passing=True)
    ok("health.service passing hides critical", nodes == [], nodes)
    later(0.5, c.agent.check.ttl_pass, check, "fine")
    start = time.monotonic()
    index2, nodes = c.health.service(name, passing=True, index=index, wait="10s")
    ok(
        "blocking health.service wakes",
        time.monotonic() - start < 8 and int(index2) > int(index),
        (index, index2),
    )
    ok(
        "ttl_pass output",
        [ch["Output"] for ch in nodes[0]["Checks"] if ch["CheckID"] == check] == ["fine"],
        nodes,
    )
    c.agent.check.ttl_warn(check, "meh")
    _, checks = c.health.checks(name)
    ok("ttl_warn", [ch["Status"] for ch in checks] == ["warning"], checks)
    ok("passing=True drops warning", c.health.service(name, passing=True)[1] == [])
    c.agent.check.ttl_fail(check, "down")
    _, critical = c.health.state("critical")
    ok("health.state critical", check in [ch["CheckID"] for ch in critical], critical)
    _, on_node = c.health.node(node)
    ok("health.node", check in [ch["CheckID"] for ch in on_node], on_node)


def catalog(dc):
    ext, svc = P + "-extnode", P + "-ext"
    ok(
        "catalog.register",
        c.catalog.register(
            ext,
            "127.0.0.2",
            service={"Service": svc, "ID": svc + "-1", "Port": 8080},
            check={
                "Node": ext,
                "CheckID": svc + "-chk",
                "Name": "ext",
                "Status": "passing",
                "ServiceID": svc + "-1",
            },
            dc=dc,
        ),
    )
    _, services = c.catalog.services(dc=dc)
    ok("catalog.services", svc in services, services)
    _, rows = c.catalog.service(svc, dc=dc)
    ok("catalog.service", [(r["Node"], r["ServicePort"]) for r in rows] == [(ext, 8080)], rows)
    _, nodes = c.catalog.nodes(dc=dc)
    ok("catalog.nodes", ext in [n["Node"] for n in nodes], nodes)
    _, one = c.catalog.node(ext, dc=dc)
    ok("catalog.node", svc + "-1" in one["Services"], one)
    _, healthy = c.health.service(svc, passing=True, dc=dc)
    ok("health of a catalog service", len(healthy) == 1, healthy)
    ok("catalog.deregister", c.catalog.deregister(ext, dc=dc))
    ok("catalog.node gone", c.catalog.node(ext)[1] is None)


def consistency(dc):
    for mode in ("consistent", "stale"):
        other = consul.Consul(host=HOST, port=PORT, consistency=mode, dc=dc)
        _, nodes = other.catalog.nodes()
        _, rows = other.catalog.service(P + "-web")
        ok("consistency=" + mode, nodes and len(rows) == 1, rows)


def kv():
    k = P + "/kv/"
    ok("kv.put", c.kv.put(k + "a", "1") and c.kv.put(k + "b", "2", flags=7))
    index, items = c.kv.get(k, recurse=True)
    ok(
        "kv.get recurse",
        [(i["Key"], i["Value"]) for i in items] == [(k + "a", b"1"), (k + "b", b"2")],
        items,
    )
    ok("kv flags", items[1]["Flags"] == 7, items)
    _, keys = c.kv.get(k, keys=True)
    ok("kv.get keys", keys == [k + "a", k + "b"], keys)
    index, a = c.kv.get(k + "a")
    ok("kv.put cas refused", c.kv.put(k + "a", "x", cas=a["ModifyIndex"] + 1000) is False)
    ok("kv.put cas", c.kv.put(k + "a", "3", cas=a["ModifyIndex"]) is True)
    index, a = c.kv.get(k + "a")
    later(0.5, c.kv.put, k + "a", "4")
    index2, a2 = c.kv.get(k + "a", index=index, wait="10s")
    ok("kv.get blocking", a2["Value"] == b"4" and int(index2) > int(index), (index, a2))
    ok("kv.delete cas refused", c.kv.delete(k + "a", cas=a2["ModifyIndex"] + 1000) is False)
    ok("kv.delete cas", c.kv.delete(k + "a", cas=a2["ModifyIndex"]) is True)
    ok("kv.delete recurse", c.kv.delete(k, recurse=True) and c.kv.get(k, recurse=True)[1] is None)


def sessions(node):
    lock = P + "/lock"
    s1 = c.session.create(name=P + "-s1", lock_delay=0, ttl=30)
    s2 = c.session.create(name=P + "-s2", lock_delay=0, behavior="delete")
    ok("session.create", s1 and s2 and s1 != s2, (s1, s2))
    ok("kv acquire", c.kv.put(lock, "me", acquire=s1) is True)
    ok("kv acquire held", c.kv.put(lock, "you", acquire=s2) is False)
    ok("lock Session", c.kv.get(lock)[1]["Session"] == s1)
    ok("kv release", c.kv.put(lock, "me", release=s1) is True)
    ok("session.list", {s1, s2} <= {s["ID"] for s in c.session.list()[1]})
    ok("session.node", {s1, s2} <= {s["ID"] for s in c.session.node(node)[1]})
    info = c.session.info(s1)[1]
    ok("session.info", info["Name"] == P + "-s1" and info["TTL"] == "30s", info)
    renewed = c.session.renew(s1)
    ok("session.renew", renewed["ID"] == s1, renewed)
    ok("kv acquire s2", c.kv.put(lock, "you", acquire=s2) is True)
    ok("session.destroy", c.session.destroy(s1) and c.session.destroy(s2))
    ok("session gone", c.session.info(s1)[1] is None)
    ok("behavior=delete", c.kv.get(lock)[1] is None)


def events():
    fired = c.event.fire(P + "-deploy", "v2")
    ok("event.fire", fired["Name"] == P + "-deploy" and fired["ID"], fired)
    _, listed = c.event.list(name=P + "-deploy")
    # python-consul decodes Consul's base64 Payload; python-consul2 hands it over as sent.
    payloads = [(e["ID"], _payload(e["Payload"])) for e in listed]
    ok("event.list", payloads == [(fired["ID"], b"v2")], listed)


def _payload(value):
    return base64.b64decode(value) if isinstance(value, str) else value


def status():
    ok("status.leader", c.status.leader())
    ok("status.peers", isinstance(c.status.peers(), list))


def deregister():
    for sid in (P + "-web-1", P + "-tcp-1", P + "-ttl-1"):
        ok("deregister " + sid.rsplit("-", 2)[-2], c.agent.service.deregister(sid))
    ok("agent.services empty", not any(s.startswith(P) for s in c.agent.services()))


def main():
    node, dc = agent_self()
    register(backend())
    probes_pass()
    ttl_and_blocking(node)
    catalog(dc)
    consistency(dc)
    kv()
    sessions(node)
    events()
    status()
    deregister()
    print("done", flush=True)


main()
