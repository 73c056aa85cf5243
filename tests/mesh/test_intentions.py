"""Intentions: Consul's precedence, the decision and its reason, the RBAC rules."""

from __future__ import annotations

import pytest

from waypost import NotFoundError, ValidationError
from waypost.catalog import Catalog, connect
from waypost.catalog.connect import IntentionBody
from waypost.mesh import rbac

from ..helpers import open_catalog

NOW = "2026-01-01T00:00:00Z"


async def put(catalog: Catalog, source: str, destination: str, action: str) -> None:
    await catalog.write(
        connect.put_intention, source, destination, IntentionBody(action=action), NOW
    )


async def test_default_allow_then_exact_beats_wildcard() -> None:
    catalog = await open_catalog()
    state = catalog.state
    assert connect.decide(state, "web", "db", True).allowed  # no intention: the default (allow)
    await put(catalog, "*", "db", "deny")
    denied = connect.decide(state, "web", "db", True)
    assert not denied.allowed and "* => db" in denied.reason and '"web" denied' in denied.reason
    await put(catalog, "web", "db", "allow")
    assert connect.decide(state, "web", "db", True).allowed
    assert not connect.decide(state, "api", "db", True).allowed
    await put(
        catalog, "api", "*", "allow"
    )  # destination counts first: * => db (8) beats api => * (6)
    assert not connect.decide(state, "api", "db", True).allowed
    order = [(i.source, i.destination) for i in connect.matches(state, "destination", "db")]
    assert order == [("web", "db"), ("*", "db"), ("api", "*")]
    assert [(i.source, i.destination) for i in connect.matches(state, "source", "api")] == [
        ("*", "db"),
        ("api", "*"),
    ]


async def test_put_replaces_in_place_and_delete_says_what_was_missing() -> None:
    catalog = await open_catalog()
    await put(catalog, "web", "db", "deny")
    first = catalog.state.intention("web", "db")
    await put(catalog, "web", "db", "allow")
    second = catalog.state.intention("web", "db")
    assert first is not None and second is not None
    assert (
        second.id == first.id
        and second.action == "allow"
        and len(catalog.state.all_intentions()) == 1
    )
    await catalog.write(connect.delete_intention, "web", "db")
    with pytest.raises(NotFoundError, match='no intention from "web" to "db"'):
        await catalog.write(connect.delete_intention, "web", "db")


@pytest.mark.parametrize(
    ("source", "body", "message"),
    [
        ("web", IntentionBody(action="maybe"), 'Action must be "allow" or "deny"'),
        ("w*b", IntentionBody(action="deny"), 'the wildcard is "\\*" alone'),
        ("web", IntentionBody(action="deny", permissions=[{"Action": "deny"}]), "not supported"),
        ("", IntentionBody(action="deny"), "source and destination are required"),
    ],
)
async def test_bad_intentions_are_refused_and_nothing_is_written(
    source: str, body: IntentionBody, message: str
) -> None:
    catalog = await open_catalog()
    with pytest.raises(ValidationError, match=message):
        await catalog.write(connect.put_intention, source, "db", body, NOW)
    assert catalog.state.all_intentions() == []


async def test_the_default_follows_the_acl_default_policy() -> None:
    catalog = await open_catalog()
    denied = connect.decide(catalog.state, "web", "db", False)
    assert not denied.allowed and denied.reason == "Default behavior configured by ACLs: denied"
    await put(catalog, "web", "db", "allow")
    assert connect.decide(catalog.state, "web", "db", False).allowed
    assert not connect.decide(catalog.state, "api", "db", False).allowed


def _by_name(rules: dict[str, object]) -> dict[str, dict[str, list[dict[str, object]]]]:
    """The policies by "intention:source=>destination:action" (names end with the intention's ID)."""
    policies = rules["policies"]
    assert isinstance(policies, dict)
    return {
        name.rsplit(":", 1)[0] if name.startswith("intention:") else name: p
        for name, p in policies.items()
    }


async def test_rbac_denies_wildcard_sources_except_more_precise_intentions() -> None:
    catalog = await open_catalog()
    await put(catalog, "*", "db", "deny")
    await put(catalog, "web", "db", "allow")
    await put(catalog, "api", "db", "deny")
    rules = rbac.rules(catalog.state, "db", True)
    assert rules["action"] == "DENY"
    by_name = _by_name(rules)
    assert set(by_name) == {"intention:*=>db:deny", "intention:api=>db:deny"}
    wildcard = by_name["intention:*=>db:deny"]["principals"][0]["andIds"]["ids"]  # type: ignore[index]
    assert wildcard[0] == rbac.principal("*")
    # web (allowed) and api (refused by its own, more precise intention) are not this one's
    assert wildcard[1] == {
        "notId": {"orIds": {"ids": [rbac.principal("api"), rbac.principal("web")]}}
    }
    assert by_name["intention:api=>db:deny"]["principals"] == [rbac.principal("api")]
    api = catalog.state.intention("api", "db")
    assert api is not None and rbac.policy_name(api) == f"intention:api=>db:deny:{api.id}"
    regex = rbac.principal("my.svc")["authenticated"]["principalName"]["safeRegex"]["regex"]
    assert regex == r"^spiffe://[^/]+/ns/default/dc/[^/]+/svc/my\.svc$"


async def test_rbac_a_wider_deny_under_a_more_precise_wildcard_allow_refuses_nobody() -> None:
    catalog = await open_catalog()
    await put(catalog, "web", "*", "deny")  # precedence 6
    await put(catalog, "*", "db", "allow")  # 8: decides web => db
    assert connect.decide(catalog.state, "web", "db", True).allowed
    assert rbac.rules(catalog.state, "db", True) == {"action": "DENY", "policies": {}}


async def test_rbac_without_deny_intentions_denies_nobody() -> None:
    catalog = await open_catalog()
    await put(catalog, "web", "db", "allow")
    assert rbac.rules(catalog.state, "db", True) == {"action": "DENY", "policies": {}}


async def test_rbac_under_default_deny_refuses_every_source_no_intention_names() -> None:
    catalog = await open_catalog()
    await put(catalog, "web", "db", "allow")
    await put(catalog, "api", "db", "deny")
    by_name = _by_name(rbac.rules(catalog.state, "db", False))
    assert set(by_name) == {"intention:api=>db:deny", rbac.DEFAULT_DENY}
    default = by_name[rbac.DEFAULT_DENY]["principals"][0]["andIds"]["ids"]  # type: ignore[index]
    assert default == [
        {"any": True},
        {"notId": {"orIds": {"ids": [rbac.principal("api"), rbac.principal("web")]}}},
    ]
    await put(catalog, "*", "db", "allow")  # every source is named now: no default refusal left
    assert set(_by_name(rbac.rules(catalog.state, "db", False))) == {"intention:api=>db:deny"}
