"""The etcd write path's Txns against the real cluster: conditions travel as
compares only, and a refused Txn is judged by reads as of its own revision
(storage/_etcd_txn.py)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from waypost._exceptions import Conflict
from waypost.storage import Condition

from ..etcd_cluster import EtcdCluster
from .conftest import Mirror
from .test_etcd import Stores, put
from .test_etcd_writes import intercept_txns

pytestmark = pytest.mark.etcd


@pytest.fixture
async def stores(cluster: EtcdCluster, prefix: str) -> AsyncIterator[Stores]:
    helper = Stores(cluster, prefix)
    yield helper
    await asyncio.gather(*(s.close() for s in helper.opened), return_exceptions=True)


def is_judging(request: Any) -> bool:
    """A read-only Txn whose reads name a revision: the judging of a refused Txn."""
    return (
        not request.compare
        and bool(request.success)
        and all(op.request_range.revision for op in request.success)
    )


def compact_past(cluster: EtcdCluster, judging: Any) -> None:
    """Write a key outside the test's prefix, then compact up to that write:
    the revision `judging` reads at is gone."""
    member = cluster.members[0]
    body = {"key": base64.b64encode(b"/elsewhere").decode(), "value": ""}
    httpx.post(f"{member.client_url}/v3/kv/put", json=body, timeout=10).raise_for_status()
    assert cluster.compact() > judging.success[0].request_range.revision


async def test_conditions_are_compares_and_their_keys_are_read_only_when_a_txn_is_refused(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    sent: list[tuple[Any, Any]] = []  # (request, response)

    def record(request: Any, call: Callable[..., Awaitable[Any]]) -> Any:
        async def recorded(endpoint: Any, timeout: float) -> Any:
            response = await call(endpoint, timeout)
            sent.append((request, response))
            return response

        return recorded

    intercept_txns(store, record)
    first = await store.commit([put("n/c")], [Condition("n/c", 0), Condition("n/other", 0)])
    ((request, _),) = sent
    slot_key = request.compare[0].key
    assert [c.key.removeprefix(stores.prefix.encode()) for c in request.compare[1:]] == [
        b"n/c",
        b"n/other",
    ]
    # the failure branch reads the slot key and rewrites _rev, nothing else
    assert [op.WhichOneof("request") for op in request.failure] == ["request_range", "request_put"]
    assert request.failure[0].request_range.key == slot_key
    sent.clear()
    with pytest.raises(Conflict, match="n/c changed"):
        await store.commit([put("n/c", b"stale")], [Condition("n/c", 0)])
    (refused, refused_answer), (judging, _) = sent
    assert not refused_answer.succeeded and len(refused.failure) == 2
    assert is_judging(judging)
    assert {op.request_range.revision for op in judging.success} == {refused_answer.header.revision}
    assert mirror.keys["n/c"].modify_index == first


async def test_a_refused_txn_compacted_before_it_is_judged_is_sent_again(
    stores: Stores, mirror: Mirror, cluster: EtcdCluster
) -> None:
    """etcd compacts the refused Txn's revision before the reads that judge it:
    its commits are sent again (their conditions evaluated anew by the next
    Txn) instead of failing; the stale one still ends in Conflict, the ones
    merged with it are written."""
    store = await stores.open(mirror)
    base = await store.commit([put("n/j")])
    await store.commit([put("n/j", b"moved")])
    judged: list[int] = []
    compact = {"next": True}

    def compact_first(request: Any, call: Callable[..., Awaitable[Any]]) -> Any:
        if not is_judging(request):
            return None

        async def after_compaction(endpoint: Any, timeout: float) -> Any:
            if compact["next"]:
                compact["next"] = False
                await asyncio.to_thread(compact_past, cluster, request)
            judged.append(request.success[0].request_range.revision)
            return await call(endpoint, timeout)

        return after_compaction

    intercept_txns(store, compact_first)
    with pytest.raises(Conflict, match="n/j changed"):  # alone in its Txn
        await store.commit([put("s/j/stale")], [Condition("n/j", base)])
    assert len(judged) == 2 and judged[0] < judged[1]  # judged again, on a later Txn
    compact["next"] = True
    results = await asyncio.gather(  # merged with others
        *(store.commit([put(f"s/j/{i}")], [Condition(f"s/j/{i}", 0)]) for i in range(10)),
        store.commit([put("s/j/stale")], [Condition("n/j", base)]),
        *(store.commit([put(f"s/j/{i}")], [Condition(f"s/j/{i}", 0)]) for i in range(10, 20)),
        return_exceptions=True,
    )
    assert isinstance(results[10], Conflict), results[10]
    assert all(isinstance(r, int) for i, r in enumerate(results) if i != 10), results
    assert not compact["next"], "the merged Txn was not refused and judged"
    assert {f"s/j/{i}" for i in range(20)} <= set(mirror.keys)
    assert "s/j/stale" not in mirror.keys
