"""Write semantics of the etcd backend against the real cluster: conditions,
idempotent retries after ambiguous failures (through tests/faultproxy.py),
ordering and bounds of group commit, lease re-puts, and the mirror's apply."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from waypost._exceptions import (
    Conflict,
    OutcomeUnknown,
    StorageError,
    StoreBusy,
    StoreUnavailable,
)
from waypost.storage import Condition, Entry, prefix_end
from waypost.storage.etcd import EtcdStorage

from ..etcd_cluster import EtcdCluster
from ..faultproxy import FaultProxy
from .conftest import Mirror
from .test_etcd import Stores, _revoke_all_leases, eventually, put

pytestmark = pytest.mark.etcd


@pytest.fixture
async def stores(cluster: EtcdCluster, prefix: str) -> AsyncIterator[Stores]:
    helper = Stores(cluster, prefix)
    yield helper
    await asyncio.gather(*(s.close() for s in helper.opened), return_exceptions=True)


class Proxies:
    """Fault proxies in front of cluster members, closed after the test."""

    def __init__(self, cluster: EtcdCluster, stores: Stores) -> None:
        self.cluster = cluster
        self.stores = stores
        self.started: list[FaultProxy] = []

    async def to(self, member: int) -> FaultProxy:
        proxy = await FaultProxy(self.cluster.members[member].endpoint).start()
        self.started.append(proxy)
        return proxy

    async def open(self, apply: Mirror, endpoints: list[str], **options: str) -> EtcdStorage:
        """A store whose URL lists exactly `endpoints` (proxies or members)."""
        options.setdefault("timeout", "3s")
        url = self.cluster.url(self.stores.prefix, **options)
        store = EtcdStorage(url.replace(self.cluster.endpoints, ",".join(endpoints)))
        await store.open(apply)
        self.stores.opened.append(store)
        return store


@pytest.fixture
async def proxies(cluster: EtcdCluster, stores: Stores) -> AsyncIterator[Proxies]:
    helper = Proxies(cluster, stores)
    yield helper
    for proxy in helper.started:
        proxy.resume()
    # the stores close first (stores fixture teardown runs after this one)
    for proxy in helper.started:
        await proxy.close()


def delete(key: str) -> Entry:
    return Entry(key, None)


def history(mirror: Mirror, key: str) -> list[tuple[int, bytes | None]]:
    """Every change `mirror` was told about for `key`, as (index, value), in order."""
    return [
        (index, entry.value)
        for index, entries, snapshot in mirror.calls
        if not snapshot
        for entry in entries
        if entry.key == key
    ]


def intercept_txns(
    store: EtcdStorage, wrap: Callable[[Any, Callable[..., Awaitable[Any]]], Any]
) -> None:
    """Let `wrap(request, call)` replace the call of every Txn the store sends."""
    session = store._session
    original = session.unary

    def unary(stub: str, method: str, request: Any) -> Any:
        call = original(stub, method, request)
        if method != "Txn":
            return call
        return wrap(request, call) or call

    session.unary = unary  # type: ignore[method-assign]


def puts_of(request: Any) -> dict[bytes, Any]:
    return {op.request_put.key: op.request_put for op in request.success if op.request_put.key}


# -- conditions ----------------------------------------------------------------


async def test_exact_conditions_compare_the_modify_index_and_absent_is_zero(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    assert store.shared is True
    created = await store.commit([put("n/a", b"1")], [Condition("n/a", 0)])  # absent: met
    with pytest.raises(Conflict, match="n/a changed"):
        await store.commit([put("n/a", b"x")], [Condition("n/a", 0)])  # no longer absent
    second = await store.commit([put("n/a", b"2")], [Condition("n/a", created)])
    with pytest.raises(Conflict):
        await store.commit([put("n/a", b"stale")], [Condition("n/a", created)])  # stale read
    deleted = await store.commit([delete("n/a")], [Condition("n/a", second)])
    with pytest.raises(Conflict):  # a stale read-modify-write must not resurrect it
        await store.commit([put("n/a", b"zombie")], [Condition("n/a", second)])
    with pytest.raises(Conflict):
        await store.commit([put("n/b")], [Condition("n/never", 5)])  # absent, expected 5
    again = await store.commit([put("n/a", b"3")], [Condition("n/a", 0)])  # absent again
    assert created < second < deleted < again
    assert mirror.keys["n/a"].value == b"3"
    assert "n/b" not in mirror.keys
    values = [v for _, v in history(mirror, "n/a")]
    assert values == [b"1", b"2", None, b"3"]  # nothing of a conflicting commit was written
    assert store.statistics()["conflicts"] == 4


async def test_range_conditions_guard_every_key_under_a_prefix(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    first = await store.commit([put("s/n1/a"), put("s/n1/b"), put("s/n2/a")])
    node1 = ("s/n1/", prefix_end("s/n1/"))
    held = await store.commit([put("s/n1/c")], [Condition(node1[0], first, node1[1])])
    with pytest.raises(Conflict, match=r"s/n1/.*changed after index"):
        await store.commit([put("s/n1/d")], [Condition(node1[0], first, node1[1])])
    # a change outside the range does not count
    await store.commit([put("s/n2/b")])
    await store.commit([put("s/n1/d")], [Condition(node1[0], held, node1[1])])
    # a key deleted since does not count (only modify indexes of keys still there)
    gone = await store.commit([delete("s/n1/a")])
    latest = max(e.modify_index for k, e in mirror.keys.items() if k.startswith("s/n1/"))
    assert latest < gone
    await store.commit([put("s/n3/x")], [Condition(node1[0], latest, node1[1])])
    # an empty range holds for any index
    await store.commit([put("s/n4/x")], [Condition("s/empty/", 0, prefix_end("s/empty/"))])
    # a range over the whole catalog ignores the internal keys, which change on
    # every Txn, also a refused one
    last = await store.commit([put("z/last")])
    with pytest.raises(Conflict):
        await store.commit([put("z/no")], [Condition("z/last", 1)])
    await store.commit([put("z/yes")], [Condition("", last, "~")])
    assert "s/n1/d" in mirror.keys and "z/no" not in mirror.keys and "z/yes" in mirror.keys


async def test_conflict_is_raised_only_after_the_mirror_has_the_change(
    stores: Stores, mirror: Mirror
) -> None:
    """The conflicting write comes from another agent, and this agent's mirror
    is slowed down: apply() fails once on it, so the watch delivers it only
    after a backoff. Conflict must still find it applied."""

    class Slow(Mirror):
        failed = False

        def __call__(self, index: int, entries: list[Entry], snapshot: bool = False) -> None:
            if not self.failed and any(e.value == b"theirs" for e in entries):
                self.failed = True
                raise RuntimeError("injected: apply failed once")
            super().__call__(index, entries, snapshot)

    slow = Slow()
    mine = await stores.open(slow)
    other = await stores.open(mirror)
    read_at = await mine.commit([put("n/shared", b"mine")])
    theirs = await other.commit([put("n/shared", b"theirs")])
    with pytest.raises(Conflict):
        await mine.commit([put("n/shared", b"stale")], [Condition("n/shared", read_at)])
    entry = slow.keys["n/shared"]
    assert (entry.value, entry.modify_index) == (b"theirs", theirs), (
        "Conflict came before the change"
    )
    assert slow.failed


async def test_merged_commits_are_not_failed_by_one_that_conflicts(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    base = await store.commit([put("n/guard"), put("n/guard2")])
    await store.commit([put("n/guard", b"moved"), put("n/guard2", b"moved")])
    stale = [Condition("n/guard", base), Condition("n/guard2", base)]  # both fail
    results = await asyncio.gather(
        *(store.commit([put(f"s/ok/{i}")]) for i in range(20)),
        store.commit([put("s/bad/x")], stale),
        *(store.commit([put(f"s/ok/{i}")], [Condition(f"s/ok/{i}", 0)]) for i in range(20, 40)),
        store.commit([put("s/bad/y")], [Condition("s/ok/0", 0)]),  # s/ok/0 exists by then
        return_exceptions=True,
    )
    assert isinstance(results[20], Conflict) and isinstance(results[41], Conflict)
    assert all(isinstance(r, int) for i, r in enumerate(results) if i not in (20, 41)), results
    assert store.statistics()["txns"] < 42  # they were merged
    assert {f"s/ok/{i}" for i in range(40)} <= set(mirror.keys)
    assert "s/bad/x" not in mirror.keys and "s/bad/y" not in mirror.keys


# -- ambiguous failures --------------------------------------------------------


@pytest.mark.parametrize(
    "op,past_deadline",
    [("delete", False), ("put", False), ("delete", True)],
    ids=["delete-retried", "put-retried", "delete-outcome-unknown"],
)
async def test_a_write_whose_answer_is_lost_is_applied_once_and_never_undoes_a_later_write(
    stores: Stores, proxies: Proxies, mirror: Mirror, op: str, past_deadline: bool
) -> None:
    """etcd applies A's write but the connection is cut before the answer; B
    then writes the same key and is acknowledged; only then can A retry. A
    must find its write applied (or report OutcomeUnknown), not apply it again
    over B's write."""
    proxy = await proxies.to(0)
    key = f"n/cut-{uuid.uuid4().hex[:8]}"
    a = await proxies.open(Mirror(), [proxy.endpoint], timeout="2s")
    b = await stores.open(mirror)
    await a.commit([put(key, b"old")])
    cut = proxy.cut_after(key.encode())
    write = asyncio.ensure_future(a.commit([delete(key) if op == "delete" else put(key, b"a")]))
    await asyncio.wait_for(cut.wait(), 5)
    theirs = await b.commit([put(key, b"b")])
    if past_deadline:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown, match="may or may not have been applied"):
            await asyncio.wait_for(write, 10)
        assert time.monotonic() - started < 5, "no answer long after the 1 s deadline"
    proxy.resume()
    await eventually(lambda: a.health().known_leader)  # gRPC reconnects after its backoff
    if not past_deadline:
        mine = await asyncio.wait_for(write, 10)
        assert mine < theirs  # the answer: the revision of the first (only) apply
    later = await a.commit([put(f"{key}-after")])  # A's slot is usable again
    assert later > theirs
    await eventually(lambda: mirror.index >= later)
    first = b"a" if op == "put" else None
    assert [v for _, v in history(mirror, key)] == [b"old", first, b"b"]
    assert mirror.keys[key].value == b"b"
    assert proxy.cuts == 1


async def test_too_many_requests_after_a_lost_answer_never_applies_a_merged_txn_twice(
    stores: Stores, mirror: Mirror
) -> None:
    """etcd applies agent A's Txn of two merged commits but the answer is lost
    (DEADLINE_EXCEEDED, injected after the real call); B then writes one of
    the keys and is acknowledged; A's retry is refused with etcd's "too many
    requests" (RESOURCE_EXHAUSTED, injected: a real etcd answers it only when
    its apply lags by 5000 entries). A must retry and find its own nonce: both
    callers get the revision of the one apply, and B's write stays (sending
    each commit again alone, as if nothing was applied, undid it)."""
    a = await stores.open(Mirror())
    b = await stores.open(mirror)
    tag = uuid.uuid4().hex[:8]
    gate_key, k1, k2 = f"n/gate-{tag}", f"n/m1-{tag}", f"n/m2-{tag}"
    gate, applied, theirs_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    attempts: list[str] = []

    def wrap(request: Any, call: Callable[..., Awaitable[Any]]) -> Any:
        keys = {key.removeprefix(stores.prefix.encode()).decode() for key in puts_of(request)}
        if gate_key in keys:  # hold A's Txn out until k1 and k2 are queued behind it

            async def held(endpoint: Any, timeout: float) -> Any:
                await gate.wait()
                return await call(endpoint, timeout)

            return held
        if not {k1, k2} <= keys or attempts:
            return None

        async def flaky(endpoint: Any, timeout: float) -> Any:
            step = ["lost", "busy", "real"][min(len(attempts), 2)]
            attempts.append(step)
            if step == "busy":
                code, details = grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"
            else:
                response = await call(endpoint, timeout)
                if step == "real":
                    return response
                applied.set()
                await theirs_done.wait()
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "injected: answer lost"
            raise grpc.aio.AioRpcError(
                code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
            )

        return flaky

    intercept_txns(a, wrap)
    first = asyncio.ensure_future(a.commit([put(gate_key)]))
    await asyncio.sleep(0.001)
    merged = [asyncio.ensure_future(a.commit([put(key, b"a")])) for key in (k1, k2)]
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(first, 10)
    await asyncio.wait_for(applied.wait(), 10)
    theirs = await b.commit([put(k1, b"b")])
    theirs_done.set()
    mine = await asyncio.wait_for(asyncio.gather(*merged), 10)
    assert attempts == ["lost", "busy", "real"]
    assert mine[0] == mine[1] < theirs  # one Txn, applied once, before B's write
    later = await a.commit([put(f"n/after-{tag}")])
    await eventually(lambda: mirror.index >= later)
    assert history(mirror, k1) == [(mine[0], b"a"), (theirs, b"b")]
    assert history(mirror, k2) == [(mine[0], b"a")]


async def test_a_stalled_member_mid_commit_gives_a_definite_answer_within_the_deadline(
    stores: Stores, proxies: Proxies, mirror: Mirror, cluster: EtcdCluster
) -> None:
    """The only member this agent can reach stops answering while a write is
    in flight: that write fails with OutcomeUnknown at its deadline, and a
    write queued behind it (same key) with StoreUnavailable: it was never sent."""
    proxy = await proxies.to(0)
    store = await proxies.open(mirror, [proxy.endpoint], timeout="1s")
    await store.commit([put("n/stall", b"0")])
    proxy.stall()
    started = time.monotonic()
    first = asyncio.ensure_future(store.commit([put("n/stall", b"1")]))
    await asyncio.sleep(0.2)
    second = asyncio.ensure_future(store.commit([put("n/stall", b"2")]))
    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(first, 5)
    assert time.monotonic() - started < 5, "no answer long after the 1 s deadline"
    with pytest.raises(StoreUnavailable, match="without being sent") as info:
        await asyncio.wait_for(second, 5)
    assert not isinstance(info.value, OutcomeUnknown)
    proxy.resume()
    index = await store.commit([put("n/stall", b"3")])
    values = [v for _, v in history(mirror, "n/stall")]
    assert values in ([b"0", b"3"], [b"0", b"1", b"3"])  # "1" at most once, "2" never
    assert mirror.keys["n/stall"].modify_index == index


async def test_a_stalled_member_is_ridden_out_on_another_one(
    stores: Stores, proxies: Proxies, mirror: Mirror, cluster: EtcdCluster
) -> None:
    proxy = await proxies.to(0)
    endpoints = [proxy.endpoint, cluster.members[1].endpoint, cluster.members[2].endpoint]
    store = await proxies.open(mirror, endpoints, timeout="4s")
    await store.commit([put("n/ride", b"0")])
    proxy.stall()
    index = await store.commit([put("n/ride", b"1")])  # within its 4 s deadline, or it raises
    assert [v for _, v in history(mirror, "n/ride")] == [b"0", b"1"]
    assert mirror.keys["n/ride"].modify_index == index


# -- group commit ----------------------------------------------------------------


async def test_commits_to_one_key_land_in_call_order_even_when_one_is_slow(
    stores: Stores, mirror: Mirror
) -> None:
    store = await stores.open(mirror)
    target = stores.prefix.encode() + b"n/order"

    def slow_first(request: Any, call: Callable[..., Awaitable[Any]]) -> Any:
        mine = puts_of(request).get(target)
        if mine is None or mine.value != b"0":
            return None

        async def slow(endpoint: Any, timeout: float) -> Any:
            await asyncio.sleep(0.3)  # as a retry on another member would be
            return await call(endpoint, timeout)

        return slow

    intercept_txns(store, slow_first)
    commits = []
    for i in range(30):
        commits.append(store.commit([put("n/order", b"%d" % i)]))
        commits.append(store.commit([put(f"s/other/{i}")]))  # keeps group commit busy
    indexes = await asyncio.gather(*commits)
    ordered = indexes[0::2]
    assert ordered == sorted(ordered) and len(set(ordered)) == 30
    assert [v for _, v in history(mirror, "n/order")] == [b"%d" % i for i in range(30)]
    assert store.statistics()["txns"] < 60


async def test_large_commits_queue_like_the_others(stores: Stores, mirror: Mirror) -> None:
    store = await stores.open(mirror)
    target = stores.prefix.encode() + b"s/big/0"

    def slow_first(request: Any, call: Callable[..., Awaitable[Any]]) -> Any:
        mine = puts_of(request).get(target)
        if mine is None or mine.value != b"first":
            return None

        async def slow(endpoint: Any, timeout: float) -> Any:
            await asyncio.sleep(0.3)
            return await call(endpoint, timeout)

        return slow

    intercept_txns(store, slow_first)
    big = [put(f"s/big/{i}") for i in range(110)]  # over the merge limit, under --max-txn-ops
    first = store.commit([put("s/big/0", b"first")])
    large = store.commit(big)
    last = store.commit([put("s/big/0", b"last")])
    a, b, c = await asyncio.gather(first, large, last)
    assert a < b < c
    assert mirror.keys["s/big/0"].value == b"last"


async def test_the_queue_is_bounded_and_deadlines_count_from_queueing(
    stores: Stores, proxies: Proxies, mirror: Mirror
) -> None:
    proxy = await proxies.to(0)
    store = await proxies.open(mirror, [proxy.endpoint], timeout="1s")
    await store.commit([put("s/q/warm")])
    proxy.stall()
    sent = [asyncio.ensure_future(store.commit([put(f"s/q/sent{i}")])) for i in range(4)]
    await asyncio.sleep(0.05)
    limit = 10_000  # the documented bound
    queued = [asyncio.ensure_future(store.commit([put(f"s/q/{i}")])) for i in range(limit)]
    await asyncio.sleep(0)
    assert store.statistics().get("queued") == limit
    with pytest.raises(StoreBusy, match="waiting"):
        await store.commit([put("s/q/one-too-many")])
    results = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 10)
    # Expired in the queue, never sent: a deadline counted from sending could not
    # expire a commit that was never sent. (No wall-clock bound: the machine is shared.)
    assert all(
        isinstance(r, StoreUnavailable)
        and not isinstance(r, OutcomeUnknown)
        and "without being sent" in str(r)
        for r in results
    ), {str(r)[:80] for r in results}
    for result in await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), 5):
        assert isinstance(result, OutcomeUnknown)
    proxy.resume()
    await store.commit([put("s/q/after")])
    assert not any(k.startswith("s/q/") and k[4:].isdigit() for k in mirror.keys)


# -- lease -------------------------------------------------------------------------


async def test_liveness_is_put_back_even_when_the_first_re_put_fails(
    stores: Stores, mirror: Mirror, cluster: EtcdCluster
) -> None:
    agent = await stores.open(Mirror(), lease_ttl="3s", timeout="1s")
    await stores.open(mirror)
    await agent.commit([put("l/node-a", b"", ephemeral=True)])
    await eventually(lambda: "l/node-a" in mirror.keys)
    live_key = stores.prefix.encode() + b"l/node-a"
    refused: list[float] = []
    window = {"until": 0.0}

    def refuse_reputs(request: Any, call: Callable[..., Awaitable[Any]]) -> Any:
        if live_key not in puts_of(request) or time.monotonic() > window["until"]:
            return None

        async def fail(endpoint: Any, timeout: float) -> Any:
            refused.append(time.monotonic())
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="injected: failed to connect to all addresses; connection refused",
            )

        return fail

    intercept_txns(agent, refuse_reputs)
    window["until"] = time.monotonic() + 1.5  # longer than the re-put's own deadline
    _revoke_all_leases(cluster)
    await eventually(lambda: "l/node-a" not in mirror.keys)
    await eventually(lambda: "l/node-a" in mirror.keys, timeout=10)
    assert refused, "the fault was not injected"
    assert agent.statistics()["lease_grants"] >= 2


# -- mirror ------------------------------------------------------------------------


async def test_apply_raising_once_does_not_skip_the_revision(stores: Stores) -> None:
    class Flaky(Mirror):
        raised = 0

        def __call__(self, index: int, entries: list[Entry], snapshot: bool = False) -> None:
            if not self.raised and any(e.key == "s/flaky" for e in entries):
                self.raised += 1
                raise RuntimeError("injected: the catalog could not apply this once")
            super().__call__(index, entries, snapshot)

    flaky = Flaky()
    store = await stores.open(flaky)
    index = await store.commit([put("s/flaky"), put("s/with-it")])
    assert flaky.raised == 1
    assert flaky.keys["s/flaky"].modify_index == index
    assert "s/with-it" in flaky.keys
    assert store.statistics()["apply_failures"] == 1
    assert await store.commit([put("s/next")]) > index


async def test_an_entry_that_never_applies_fails_only_its_own_commit(stores: Stores) -> None:
    class Picky(Mirror):
        def __call__(self, index: int, entries: list[Entry], snapshot: bool = False) -> None:
            if any(e.key == "s/poison" for e in entries):
                raise ValueError("injected: undecodable record")
            super().__call__(index, entries, snapshot)

    picky = Picky()
    store = await stores.open(picky, timeout="5s")
    results = await asyncio.gather(
        *(store.commit([put(f"s/ok/{i}")]) for i in range(10)),
        store.commit([put("s/poison")]),
        *(store.commit([put(f"s/ok/{i}")]) for i in range(10, 20)),
        return_exceptions=True,
    )
    poisoned = results[10]
    assert isinstance(poisoned, StorageError) and "could not apply" in str(poisoned)
    assert all(isinstance(r, int) for i, r in enumerate(results) if i != 10), results
    assert {f"s/ok/{i}" for i in range(20)} <= set(picky.keys)
    assert await store.commit([put("s/later")]) > 0  # the mirror goes on
    truth = Mirror()
    await stores.open(truth)
    assert truth.keys["s/poison"].modify_index in results  # it shared a Txn with others


# -- leader kill, two agents, history check ------------------------------------------


async def test_leader_kill_under_two_agents_keeps_every_acknowledged_write(
    stores: Stores, mirror: Mirror, cluster: EtcdCluster
) -> None:
    """Two agents write the same keys concurrently while the etcd leader is
    killed. Each commit writes one shared key (put or delete) and a marker
    key of its own, so every commit can be found in the history an observer
    agent records. Then: no commit appears twice, every acknowledged commit
    appears at its acknowledged index, nothing refused appears, and each key
    ends as the last commit that touched it left it."""
    observer = mirror
    await stores.open(observer, timeout="8s")
    agents = [await stores.open(Mirror(), timeout="8s") for _ in range(2)]
    acknowledged: dict[str, tuple[int, str, bytes | None]] = {}  # marker -> (index, key, value)
    unknown: set[str] = set()
    refused: set[str] = set()
    done = {"n": 0}

    async def writer(agent: EtcdStorage, name: str) -> None:
        for seq in range(40):
            key = f"k/{seq % 5}"
            marker = f"m/{name}/{seq}"
            value = None if seq % 4 == 3 else f"{name}-{seq}".encode()
            try:
                index = await agent.commit([Entry(key, value), put(marker)])
            except OutcomeUnknown:
                unknown.add(marker)
            except StorageError:
                refused.add(marker)
            else:
                acknowledged[marker] = (index, key, value)
            done["n"] += 1

    async def assassin() -> None:
        await eventually(lambda: done["n"] >= 60)
        leader = cluster.leader()
        assert leader is not None
        cluster.kill(leader)

    await asyncio.gather(
        *(writer(agent, f"a{i}w{w}") for i, agent in enumerate(agents) for w in range(3)),
        assassin(),
    )
    assert len(acknowledged) >= 150, f"writes did not resume: {len(refused)} refused"
    fresh = Mirror()
    await stores.open(fresh, timeout="8s")
    await eventually(lambda: observer.index >= fresh.index)

    applied: dict[str, int] = {}  # marker -> index it was applied at
    for index, entries, snapshot in observer.calls:
        for entry in entries:
            if not snapshot and entry.key.startswith("m/"):
                assert entry.key not in applied, f"{entry.key} was applied twice"
                applied[entry.key] = index
    for marker, (index, key, value) in acknowledged.items():
        assert applied.get(marker) == index, f"acknowledged {marker} not at {index}"
        events = history(observer, key)
        if value is not None or not _absent_before(events, index):
            assert (index, value) in events, f"{key} not written by {marker} at {index}"
    assert not (refused & set(applied)), "a write reported as not made was applied"
    assert {k: e.value for k, e in fresh.keys.items()} == {
        k: e.value for k, e in observer.keys.items()
    }
    for key in {k for _, k, _ in acknowledged.values()}:
        events = history(observer, key)
        last_value = events[-1][1]
        if last_value is None:
            assert key not in fresh.keys
        else:
            assert fresh.keys[key].value == last_value
        last_ack = max(i for i, k, _ in acknowledged.values() if k == key)
        later = [i for i, _ in events if i > last_ack]
        by_unknown = {applied[m] for m in unknown if m in applied}
        assert set(later) <= by_unknown, f"{key} changed after its last acknowledged write"


def _absent_before(events: list[tuple[int, bytes | None]], index: int) -> bool:
    """The key did not exist just before `index` (so deleting it made no event)."""
    before = [v for i, v in events if i < index]
    return not before or before[-1] is None
