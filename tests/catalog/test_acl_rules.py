"""ACL rules (HCL and JSON) and the decisions an authorizer takes from them."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from waypost._exceptions import AclNotFound, PermissionDenied, ValidationError
from waypost.catalog import aclrules
from waypost.catalog.acl import ANONYMOUS_ACCESSOR, MANAGEMENT_POLICY_ID, AclTable
from waypost.catalog.aclrules import DENY, LIST, READ, WRITE
from waypost.catalog.authz import Authorizer, Resolver
from waypost.catalog.codec import put_acl
from waypost.catalog.model import NodeIdentity, Policy, Role, ServiceIdentity, Token

HCL = """
# a comment
service_prefix "" { policy = "read" }
service "web" {
  policy = "write"
  intentions = "deny"
}
service_prefix "internal-" { policy = "deny" }
node_prefix "" { policy = "read" }
key_prefix "app/" { policy = "list" }
operator = "read"
"""

JSON = """{
  "service_prefix": {"": {"policy": "read"}},
  "service": {"web": {"policy": "write", "intentions": "deny"}},
  "node_prefix": {"": {"policy": "read"}},
  "key_prefix": [{"app/": {"policy": "list"}}],
  "operator": "read"
}"""


def authz(text: str, default_allow: bool = False) -> Authorizer:
    return Authorizer("acc", aclrules.parse(text), default_allow)


@pytest.mark.parametrize("text", [HCL, JSON], ids=["hcl", "json"])
def test_hcl_and_json_give_the_same_rules(text: str) -> None:
    rules = aclrules.parse(text)
    assert rules.exact["service"] == {"web": WRITE}
    assert rules.prefix["service"][""] == READ
    assert rules.exact["intention"] == {"web": DENY}
    assert rules.prefix["key"] == {"app/": LIST}
    assert rules.unnamed == {"operator": READ}


@pytest.mark.parametrize(
    ("resource", "name", "level", "allowed"),
    [
        ("service", "web", WRITE, True),  # exact rule
        ("service", "web", READ, True),  # write implies read
        ("service", "api", READ, True),  # prefix "" rule
        ("service", "api", WRITE, False),  # a read rule refuses write (no fall-through)
        ("service", "internal-db", READ, False),  # the longest prefix wins: deny
        ("node", "n1", READ, True),
        ("node", "n1", WRITE, False),
        ("key", "app/x", LIST, True),
        ("key", "app/x", READ, True),  # list implies read
        ("key", "app/x", WRITE, False),
        ("key", "other", READ, False),  # no rule: the default (deny)
        ("operator", "", READ, True),
        ("operator", "", WRITE, False),
        ("acl", "", READ, False),
        ("intention", "web", READ, False),  # explicit intentions = "deny"
        ("intention", "api", READ, True),  # implied by service:read
        ("intention", "api", WRITE, False),
    ],
)
def test_decisions(resource: str, name: str, level: int, allowed: bool) -> None:
    assert authz(HCL).allowed(resource, name, level) is allowed


def test_default_policy_applies_only_where_no_rule_matches() -> None:
    a = authz('service "web" { policy = "read" }', default_allow=True)
    assert a.allowed("node", "anything", WRITE)
    assert not a.allowed("service", "web", WRITE)  # the rule decides, not the default


def test_merge_takes_deny_then_write_then_list_then_read() -> None:
    rules = aclrules.parse('service "web" { policy = "read" }')
    rules.merge(aclrules.parse('service "web" { policy = "write" }'))
    assert rules.exact["service"]["web"] == WRITE
    rules.merge(aclrules.parse('service "web" { policy = "deny" }'))
    rules.merge(aclrules.parse('service "web" { policy = "write" }'))
    assert rules.exact["service"]["web"] == DENY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('servce "web" { policy = "read" }', 'unknown resource "servce"'),
        ('service "web" { policy = "wirte" }', "invalid policy 'wirte'"),
        ('service "web" { policy = "list" }', "invalid policy 'list'"),
        ('node "n" { intentions = "read" }', 'unknown field "intentions"'),
        ('service "web" { poliy = "read" }', 'unknown field "poliy"'),
        ('service "web" { }', "has no policy"),
        ('operator = "list"', "invalid policy"),
        ('service "web" { policy = ', "Failed to parse ACL rules"),
        ('{"service": ', "invalid JSON"),
        ("[1]", "Failed to parse ACL rules"),
    ],
)
def test_bad_rules_are_refused_with_the_mistake(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match="Failed to parse ACL rules") as info:
        aclrules.parse(text)
    assert message in str(info.value)


def test_denied_message_names_the_permission() -> None:
    with pytest.raises(PermissionDenied) as info:
        authz(HCL).require("service", "api", WRITE)
    assert str(info.value) == (
        "Permission denied: token with AccessorID 'acc' lacks permission 'service:write' on \"api\""
    )
    with pytest.raises(PermissionDenied, match=r"lacks permission 'acl:write'$"):
        authz(HCL).require("acl", "", WRITE)


def test_require_all_checks_every_permission_and_names_the_first_missing() -> None:
    """The one loop both the API's Guard and the agent's own writes use."""
    a = authz('service "web" { policy = "write" }')
    a.require_all([("service", "web", WRITE)])
    with pytest.raises(PermissionDenied, match=r"'node:write' on \"n1\"$"):
        a.require_all([("service", "web", WRITE), ("node", "n1", WRITE), ("key", "k", READ)])


# -- the resolver ---------------------------------------------------------------


def table(*records: Policy | Role | Token) -> AclTable:
    t = AclTable()
    for n, record in enumerate(records, start=1):
        t.apply(n, put_acl(record), set())
    return t


READER = Policy(id="p1", name="reader", rules='service_prefix "" { policy = "read" }')
ONE = Token(accessor_id="a1", secret_id="s1", policies=("p1",))


def test_resolver_finds_a_token_by_secret_and_compares_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("waypost.catalog.authz.hmac.compare_digest", compare)
    resolver = Resolver(table(READER, ONE), "dc1", default_allow=False)
    a = resolver.resolve("s1")
    assert a.accessor == "a1" and a.allowed("service", "x", READ)
    assert compared == [(b"s1", b"s1")]
    with pytest.raises(AclNotFound, match="ACL not found"):
        resolver.resolve("s2")


def test_anonymous_token_and_management() -> None:
    anonymous = Token(accessor_id=ANONYMOUS_ACCESSOR, secret_id="anonymous", policies=("p1",))
    boss = Token(accessor_id="a2", secret_id="s2", policies=(MANAGEMENT_POLICY_ID,))
    management = Policy(id=MANAGEMENT_POLICY_ID, name="global-management")
    resolver = Resolver(table(READER, management, anonymous, boss), "dc1", default_allow=False)
    assert resolver.resolve("").allowed("service", "x", READ)  # no secret: the anonymous token
    assert not resolver.resolve("").allowed("service", "x", WRITE)
    assert resolver.resolve("s2").allowed("anything-new", "x", WRITE)


def test_roles_identities_and_datacenters() -> None:
    other_dc = Policy(
        id="p2", name="elsewhere", rules='node_prefix "" { policy = "write" }', datacenters=("dc2",)
    )
    role = Role(id="r1", name="role", policies=("p1", "p2"))
    token = Token(
        accessor_id="a3",
        secret_id="s3",
        roles=("r1",),
        service_identities=(ServiceIdentity("api"),),
        node_identities=(NodeIdentity("n9", "dc1"), NodeIdentity("n8", "dc2")),
    )
    a = Resolver(table(READER, other_dc, role, token), "dc1", default_allow=False).resolve("s3")
    assert a.allowed("service", "api", WRITE) and a.allowed("service", "api-sidecar-proxy", WRITE)
    assert not a.allowed("service", "web", WRITE)
    assert a.allowed("node", "n9", WRITE)
    assert not a.allowed("node", "n8", WRITE)  # its identity is for dc2
    assert not a.allowed("node", "n1", WRITE)  # the dc2-only policy does not apply here


def test_expired_tokens_are_not_found_and_changes_are_seen() -> None:
    now = [1000.0]
    expiring = Token(accessor_id="a4", secret_id="s4", policies=("p1",), expiration_time=1060.0)
    t = table(READER, expiring)
    resolver = Resolver(t, "dc1", default_allow=False, clock=lambda: now[0])
    assert resolver.resolve("s4").allowed("service", "x", READ)
    now[0] = 1060.0
    with pytest.raises(AclNotFound):
        resolver.resolve("s4")
    t.apply(9, put_acl(Policy(id="p1", name="reader", rules="")), set())  # rules removed
    forever = Token(accessor_id="a4", secret_id="s4", policies=("p1",))
    t.apply(10, put_acl(forever), set())
    assert not resolver.resolve("s4").allowed("service", "x", READ)


def test_a_resolved_secret_is_not_hashed_again_and_an_unknown_one_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hot path: a token seen before costs a dict lookup, no SHA-256; an
    unknown secret is looked up (by its hash) every time, never cached."""
    hashed: list[bytes] = []
    real = hashlib.sha256

    def sha256(data: bytes) -> object:
        hashed.append(data)
        return real(data)

    t = table(READER, ONE)
    monkeypatch.setattr("waypost.catalog.acl.hashlib.sha256", sha256)
    resolver = Resolver(t, "dc1", default_allow=False)
    first = resolver.resolve("s1")
    assert resolver.resolve("s1") is first and resolver.resolve("s1") is first
    assert hashed == [b"s1"]  # the first lookup only
    for _ in range(2):
        with pytest.raises(AclNotFound):
            resolver.resolve("guess")
    assert hashed == [b"s1", b"guess", b"guess"]
    t.apply(9, put_acl(Token(accessor_id="a1", secret_id="s1", policies=())), set())
    assert resolver.resolve("s1") is not first  # an ACL change: looked up again
    assert not resolver.resolve("s1").allowed("service", "x", READ)
