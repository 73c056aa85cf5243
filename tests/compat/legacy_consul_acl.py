"""The old `consul` libraries against an agent with ACLs on (default deny).

    python legacy_consul_acl.py HOST PORT PREFIX MANAGEMENT_TOKEN

python-consul sends `token=` as the `?token=` query parameter (and
Consul(token=...) as the default for every call); python-consul2 does the same
for the old endpoints and sends X-Consul-Token on its ACL API
(acl.policy, acl.tokens), which python-consul lacks: it only has the legacy
/v1/acl/create API that Consul removed in 1.11, and its
agent.service.deregister sends no token at all. Prints `ok <step>` per step,
then `done`; the first step that does not hold raises.
"""

from __future__ import annotations

import inspect
import sys

import consul

HOST, PORT, P, MGMT = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
anonymous = consul.Consul(host=HOST, port=PORT)
admin = consul.Consul(host=HOST, port=PORT, token=MGMT)


def ok(step, cond, detail=None):
    if not cond:
        raise AssertionError(f"{step}: {detail!r}")
    print("ok", step, flush=True)


def denied(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except consul.ACLPermissionDenied:
        return True
    return False


def per_call_token():
    ok("anonymous kv.put denied", denied(anonymous.kv.put, P + "/k", "v"))
    ok("kv.put token=", anonymous.kv.put(P + "/k", "v", token=MGMT) is True)
    ok("anonymous kv.get denied", denied(anonymous.kv.get, P + "/k"))  # Consul: 403, not 404
    ok("kv.get token=", anonymous.kv.get(P + "/k", token=MGMT)[1]["Value"] == b"v")
    ok("anonymous register denied", denied(anonymous.agent.service.register, P + "-svc", port=1))
    ok("register token=", anonymous.agent.service.register(P + "-svc", port=1, token=MGMT))
    ok("anonymous health filtered", anonymous.health.service(P + "-svc")[1] == [])
    ok("health token=", len(anonymous.health.service(P + "-svc", token=MGMT)[1]) == 1)
    ok("catalog.service token=", len(anonymous.catalog.service(P + "-svc", token=MGMT)[1]) == 1)


def client_token():
    ok("Consul(token=) reads", P + "-svc" in admin.catalog.services()[1])
    ok("Consul(token=) kv.delete", admin.kv.delete(P + "/k") is True)
    deregister = admin.agent.service.deregister
    if "token" in inspect.signature(deregister).parameters:
        ok("Consul(token=) deregister", deregister(P + "-svc"))
    else:  # python-consul 1.1.0 sends no token here at all: anonymous, as Consul would see it
        ok("deregister without a token denied", denied(deregister, P + "-svc"))


def acl_api():
    """python-consul2's ACL API: a policy and a token limited to one KV prefix."""
    if not hasattr(admin.acl, "policy"):
        return
    policy = admin.acl.policy.create(P + "-kv", rules=f'key_prefix "{P}/" {{ policy = "write" }}')
    ok("acl.policy.create", policy["Name"] == P + "-kv", policy)
    token = admin.acl.tokens.create({"Description": P, "Policies": [{"ID": policy["ID"]}]})
    ok("acl.tokens.create", token["SecretID"] and token["AccessorID"], token)
    me = anonymous.acl.tokens.self(token=token["SecretID"])
    ok("acl.tokens.self", me["AccessorID"] == token["AccessorID"], me)
    scoped = consul.Consul(host=HOST, port=PORT, token=token["SecretID"])
    ok("scoped token writes its prefix", scoped.kv.put(P + "/ok", "1") is True)
    ok("scoped token denied elsewhere", denied(scoped.kv.put, P + "-other/x", "1"))
    ok("acl.tokens.list", token["AccessorID"] in [t["AccessorID"] for t in admin.acl.tokens.list()])
    admin.acl.tokens.delete(token["AccessorID"])
    ok("deleted token denied", denied(scoped.kv.put, P + "/ok", "2"))


per_call_token()
client_token()
acl_api()
print("done", flush=True)
