"""ACL plans over the Txn: the rules that span records hold under races."""

from __future__ import annotations

from pathlib import Path

import pytest

from waypost._exceptions import Conflict, NotFoundError, PermissionDenied, ValidationError
from waypost.catalog import Catalog, aclwrites
from waypost.catalog.acl import ANONYMOUS_ACCESSOR, MANAGEMENT_POLICY_ID
from waypost.catalog.aclwrites import Link, PolicyBody, TokenBody
from waypost.catalog.txn import Txn

from ..helpers import open_catalog


@pytest.fixture(params=["memory", "sqlite"])
async def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path / 'c.db'}"
    return await open_catalog(url)


async def commit(catalog: Catalog, txn: Txn) -> int:
    return await catalog.storage.commit(list(txn.ops.values()), list(txn.conditions.values()))


async def test_two_bootstraps_planned_at_once_cannot_both_commit(catalog: Catalog) -> None:
    first, second = Txn(catalog.state), Txn(catalog.state)
    aclwrites.bootstrap(first, "a1", "s1", 0.0)
    aclwrites.bootstrap(second, "a2", "s2", 0.0)  # decided on the same state: allowed too
    await commit(catalog, first)
    with pytest.raises(Conflict):
        await commit(catalog, second)  # its condition on the ACL range no longer holds
    with pytest.raises(PermissionDenied, match="no longer allowed"):
        await catalog.write(aclwrites.bootstrap, "a3", "s3", 0.0)  # run again: refused
    assert set(catalog.state.acl.tokens) == {"a1"}


async def test_policy_names_stay_unique_under_a_race(catalog: Catalog) -> None:
    body = PolicyBody(name="readers", rules='service_prefix "" { policy = "read" }')
    first, second = Txn(catalog.state), Txn(catalog.state)
    aclwrites.set_policy(first, body, "p1", True)
    aclwrites.set_policy(second, body, "p2", True)
    await commit(catalog, first)
    with pytest.raises(Conflict):
        await commit(catalog, second)
    with pytest.raises(ValidationError, match="already exists"):
        await catalog.write(aclwrites.set_policy, body, "p2", True)


async def test_builtins_tokens_links_and_what_cannot_be_deleted(catalog: Catalog) -> None:
    await catalog.write(aclwrites.ensure_builtins, "boss-secret", "boss", 0.0)
    await catalog.write(aclwrites.ensure_builtins, "boss-secret", "other", 0.0)  # idempotent
    table = catalog.state.acl
    assert table.tokens["boss"].policies == (MANAGEMENT_POLICY_ID,)
    assert ANONYMOUS_ACCESSOR in table.tokens and table.bootstrap is not None
    assert len(table.tokens) == 2
    await catalog.write(aclwrites.set_policy, PolicyBody(name="r", rules=""), "p1", True)
    token = TokenBody(policies=[Link(name="r")])
    made = await catalog.write(aclwrites.set_token, token, "t1", "s1", True, 0.0)
    assert made.policies == ("p1",)
    with pytest.raises(ValidationError, match='Cannot find policy "nope"'):
        await catalog.write(
            aclwrites.set_token, TokenBody(policies=[Link(name="nope")]), "t2", "s2", True, 0.0
        )
    with pytest.raises(ValidationError, match="SecretID is already in use"):
        await catalog.write(aclwrites.set_token, TokenBody(), "t3", "s1", True, 0.0)
    with pytest.raises(ValidationError, match="not permitted"):
        await catalog.write(aclwrites.delete_policy, MANAGEMENT_POLICY_ID)
    with pytest.raises(ValidationError, match="not permitted"):
        await catalog.write(aclwrites.delete_token, ANONYMOUS_ACCESSOR)
    with pytest.raises(NotFoundError):
        await catalog.write(aclwrites.set_token, TokenBody(), "missing", "", False, 0.0)
    with pytest.raises(ValidationError, match="ExpirationTTL must be between"):
        await catalog.write(
            aclwrites.set_token, TokenBody(expirationttl="1s"), "t4", "s4", True, 0.0
        )
    await catalog.write(aclwrites.delete_policy, "p1")
    assert "p1" not in table.policies and table.tokens["t1"].policies == ("p1",)  # shown without it
    await catalog.close()
