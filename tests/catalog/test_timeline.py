"""The health timeline, fed by a real catalog's applied changes (memory and sqlite stores).

Every write goes through `Catalog.write` with the plans the agent uses, so
what is recorded is what an agent would record; only the wall clock is fake.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from waypost.catalog import Catalog, Check, Service, codec, writes
from waypost.catalog.definitions import CheckRegistration, ServiceRegistration
from waypost.catalog.model import NODE_MAINT_CHECK_ID, SERF_CHECK_ID, SERVICE_MAINT_PREFIX
from waypost.catalog.state import Change
from waypost.catalog.timeline import STALE_SHARE, Timeline
from waypost.storage import open_storage

from ..helpers import check, node, open_catalog


class Wall:
    """A wall clock that moves when told to."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
async def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Catalog]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/c.db"
    cat = await open_catalog(url)
    serf = check(SERF_CHECK_ID)
    await cat.write(writes.join, node(), serf)
    yield cat
    await cat.close()


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def timeline(catalog: Catalog, wall: Wall) -> Timeline:
    tl = Timeline(catalog.state, wall=wall)
    catalog.subscribe_records(tl.record)
    return tl


def ttl(
    status: str = "passing", reap: str = "", name: str = "alive", cid: str = ""
) -> CheckRegistration:
    return CheckRegistration(
        name=name, checkid=cid, ttl="1m", status=status, deregistercriticalserviceafter=reap
    )


async def register(cat: Catalog, sid: str, *checks: CheckRegistration, name: str = "web") -> None:
    reg = ServiceRegistration(name=name, id=sid, port=80, checks=list(checks))
    await cat.write(writes.register, "n1", reg, False, False)


async def set_status(cat: Catalog, check_id: str, status: str, output: str) -> None:
    await cat.write(writes.set_status, "n1", check_id, status, output)


def kinds(tl: Timeline, service: str = "web", **kw: str) -> list[tuple[str, ...]]:
    return [(e.kind, e.instance, e.before, e.after, e.status) for e in tl.events(service, **kw)]


def maintenance(check_id: str, service_id: str = "", reason: str = "deploy") -> Check:
    return Check(
        node="n1",
        check_id=check_id,
        name="Maintenance Mode",
        status="critical",
        notes=reason,
        service_id=service_id,
        type="maintenance",
    )


async def test_registration_and_check_transitions_with_time_and_output(
    catalog: Catalog, timeline: Timeline, wall: Wall
) -> None:
    await register(catalog, "web-1", ttl("passing"))
    wall.now += 10
    await set_status(catalog, "service:web-1", "warning", "slow: 900 ms")
    wall.now += 10
    await set_status(catalog, "service:web-1", "critical", "connection refused")
    await set_status(catalog, "service:web-1", "critical", "still refused")  # no transition
    assert kinds(timeline) == [
        ("registered", "web-1", "", "passing", "passing"),
        ("check", "web-1", "passing", "warning", "warning"),
        ("check", "web-1", "warning", "critical", "critical"),
    ]
    events = timeline.events("web")
    assert [e.time - events[0].time for e in events] == [0, 10, 20]
    assert [e.output for e in events[1:]] == ["slow: 900 ms", "connection refused"]
    assert events[2].check_name == "alive" and events[2].check_type == "ttl"
    assert events[2].index == catalog.state.index


async def test_a_registration_without_checks_is_recorded_with_its_nodes_health(
    catalog: Catalog, timeline: Timeline
) -> None:
    await register(catalog, "web-1")  # no checks of its own: serfHealth decides
    (event,) = timeline.events("web")
    assert (event.kind, event.instance, event.node, event.before, event.after) == (
        "registered",
        "web-1",
        "n1",
        "",
        "passing",
    )
    assert (event.status, event.output, event.check_id, event.index) == (
        "passing",
        "",
        "",
        catalog.state.index,
    )
    await catalog.write(writes.node_maintenance, maintenance(NODE_MAINT_CHECK_ID), True)
    await register(catalog, "web-2")
    assert kinds(timeline, instance="web-2") == [
        ("registered", "web-2", "", "maintenance", "maintenance")
    ]


async def test_a_registration_carries_the_output_of_its_worst_own_check(
    catalog: Catalog, timeline: Timeline
) -> None:
    checks = [
        CheckRegistration(name="a", ttl="1m", status="warning", output="slow"),
        CheckRegistration(name="b", ttl="1m", status="critical", output="down " + "x" * 600),
        CheckRegistration(name="c", ttl="1m", status="critical", output="also down"),
    ]
    await register(catalog, "web-1", *checks)
    (event,) = timeline.events("web")
    assert event.status == "critical"
    assert event.output.startswith("down x") and len(event.output) == 512  # the first, cut


async def test_a_check_added_or_removed_on_a_live_instance(
    catalog: Catalog, timeline: Timeline
) -> None:
    await register(catalog, "web-1", ttl("passing"))
    reg = CheckRegistration(name="disk", serviceid="web-1", ttl="1m", status="warning")
    await catalog.write(writes.register_check, "n1", reg, False)
    await catalog.write(writes.deregister_check, "n1", "disk")
    assert kinds(timeline)[1:] == [
        ("check", "web-1", "", "warning", "warning"),
        ("check", "web-1", "warning", "", "passing"),
    ]


async def test_maintenance_on_with_its_reason_and_off(catalog: Catalog, timeline: Timeline) -> None:
    await register(catalog, "web-1", ttl("passing"))
    maint = maintenance(SERVICE_MAINT_PREFIX + "web-1", "web-1", "deploying v2")
    await catalog.write(writes.service_maintenance, maint, True)
    await catalog.write(writes.service_maintenance, maint, False)
    on, off = timeline.events("web")[1:]
    assert (on.kind, on.after, on.status, on.output) == (
        "maintenance",
        "maintenance",
        "maintenance",
        "deploying v2",
    )
    assert (off.kind, off.before, off.after, off.status) == (
        "maintenance",
        "maintenance",
        "",
        "passing",
    )


async def test_a_node_level_change_is_an_event_of_every_instance_on_the_node(
    catalog: Catalog, timeline: Timeline
) -> None:
    await register(catalog, "web-1", ttl("passing"))
    await register(catalog, "db-1", ttl("passing"), name="db")
    await catalog.write(writes.node_maintenance, maintenance(NODE_MAINT_CHECK_ID), True)
    assert kinds(timeline)[-1] == ("maintenance", "web-1", "", "maintenance", "maintenance")
    assert kinds(timeline, "db")[-1] == ("maintenance", "db-1", "", "maintenance", "maintenance")
    # The agent's liveness going away turns serfHealth critical: recorded too.
    await catalog.commit([codec.delete(codec.live_key("n1"))])
    last = timeline.events("db")[-1]
    assert (last.kind, last.check_id, last.before, last.after) == (
        "check",
        SERF_CHECK_ID,
        "passing",
        "critical",
    )


async def test_deregistered_or_reaped(catalog: Catalog, timeline: Timeline, wall: Wall) -> None:
    await register(catalog, "web-1", ttl("critical", reap="30s"))
    await register(catalog, "web-2", ttl("passing", reap="30s"))
    await set_status(catalog, "service:web-2", "critical", "gone quiet")
    wall.now += 31
    await catalog.deregister_service("n1", "web-2")  # critical 31 s with a 30 s limit: reaped
    await register(catalog, "web-3", ttl("passing", reap="30s"))
    await set_status(catalog, "service:web-3", "critical", "down")
    await catalog.deregister_service("n1", "web-3")  # critical for 0 s: an operator did it
    await register(catalog, "web-4", ttl("passing", reap="30s"))
    await catalog.deregister_service("n1", "web-4")  # passing: not the reaper's doing
    removed = [e for e in timeline.events("web") if e.kind in ("reaped", "deregistered")]
    assert [(e.kind, e.instance, e.before, e.status) for e in removed] == [
        ("reaped", "web-2", "critical", ""),
        ("deregistered", "web-3", "critical", ""),
        ("deregistered", "web-4", "passing", ""),
    ]
    assert "DeregisterCriticalServiceAfter" in removed[0].output
    # One event per instance removal: its checks going with it are not events of their own.
    assert [e.kind for e in timeline.events("web", instance="web-3")] == [
        "registered",
        "check",
        "deregistered",
    ]


async def test_filters_by_instance_node_and_seq(catalog: Catalog, timeline: Timeline) -> None:
    await register(catalog, "web-1", ttl("passing"))
    await register(catalog, "web-2", ttl("passing"))
    await set_status(catalog, "service:web-2", "warning", "")
    assert [e.instance for e in timeline.events("web", instance="web-2")] == ["web-2", "web-2"]
    assert timeline.events("web", instance="web-2", node="other") == []
    first = timeline.events("web")[0].seq
    assert [e.seq for e in timeline.events("web", after=first)] == [first + 1, first + 2]
    assert [e.instance for e in timeline.all_events(limit=1)] == ["web-2"]


async def test_bounded_by_age_per_service_and_in_total(catalog: Catalog, wall: Wall) -> None:
    tl = Timeline(catalog.state, wall=wall, retention=100, per_service=5, total=8)
    catalog.subscribe_records(tl.record)
    await register(catalog, "a-1", ttl("passing"), name="a")
    await register(catalog, "b-1", ttl("passing"), name="b")
    for n in range(10):  # a flaps: 20 transitions, kept 5
        await set_status(catalog, "service:a-1", "critical", f"down {n}")
        await set_status(catalog, "service:a-1", "passing", f"up {n}")
    assert len(tl.events("a")) == 5
    assert tl.events("a")[-1].output == "up 9"
    assert len(tl.events("b")) == 1  # b's one event survived a's flapping
    for n in range(6):  # b now: the total (8) evicts the oldest first, a's
        await set_status(catalog, "service:b-1", "critical" if n % 2 == 0 else "passing", "")
    assert len(tl.events("b")) == 5 and len(tl.events("a")) == 3
    assert tl.statistics()["events"] == 8
    wall.now += 101
    assert tl.events("a") == [] and tl.events("b") == []
    assert tl.statistics() == {"events": 0, "services": 0, "recorded": 28}


async def test_memory_stays_bounded_under_stale_slots(catalog: Catalog, wall: Wall) -> None:
    """The per-service cap leaves stale slots behind; they are compacted, not kept."""
    tl = Timeline(catalog.state, wall=wall, per_service=3, total=100_000)
    catalog.subscribe_records(tl.record)
    await register(catalog, "a-1", ttl("passing"), name="a")
    for n in range(1500):
        await set_status(catalog, "service:a-1", "critical" if n % 2 == 0 else "passing", "")
    assert len(tl.events("a")) == 3
    assert len(tl._order) <= 3 + 3 // STALE_SHARE + 1024


async def test_outputs_are_cut(catalog: Catalog, timeline: Timeline) -> None:
    await register(catalog, "web-1", ttl("passing"))
    await set_status(catalog, "service:web-1", "critical", "x" * 5000)
    assert len(timeline.events("web")[-1].output) == 512


async def test_the_replay_at_start_up_is_not_recorded(tmp_path: Path, wall: Wall) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    first = await open_catalog(url)
    await first.write(writes.join, node(), check(SERF_CHECK_ID))
    await register(first, "web-1", ttl("passing"))
    await first.close()
    again = Catalog(open_storage(url))
    tl = Timeline(again.state, wall=wall)
    again.subscribe_records(tl.record)
    await again.open()
    assert tl.statistics()["recorded"] == 0  # the stored instance is not "registered" again
    await set_status(again, "service:web-1", "warning", "")
    assert kinds(tl) == [("check", "web-1", "passing", "warning", "warning")]
    await again.close()


async def test_changes_report_the_stored_record_before_and_after(catalog: Catalog) -> None:
    """A held check (its result could not be stored) shows critical, but the
    change reports what is stored: the timeline records stored history."""
    await register(catalog, "web-1", ttl("passing"))
    seen: list[list[Change]] = []
    catalog.subscribe_records(lambda _index, changes: seen.append(changes))
    catalog.hold("n1", "service:web-1", "store unreachable")
    await set_status(catalog, "service:web-1", "warning", "slow")
    ((old, new),) = seen[-1]
    assert isinstance(old, Check) and isinstance(new, Check)
    assert (old.status, new.status) == ("passing", "warning")
    # Changes are made without NamedTuple's constructor (state.py): still Changes.
    assert type(seen[-1][0]) is Change and seen[-1][0].old is old and seen[-1][0].new is new
    assert catalog.state.check("n1", "service:web-1").status == "critical"  # still held


async def test_a_blocking_query_from_another_history_answers_at_once(catalog: Catalog) -> None:
    """An index above anything applied (the client saw an agent before its
    restart on an older store): no waiting out `wait`."""
    ahead = catalog.state.index + 1000
    await asyncio.wait_for(catalog.block([("svc", "web")], ahead, wait=30), timeout=2)
    assert catalog.parked == 0


async def test_a_removal_is_judged_whatever_the_order_of_its_batch(
    catalog: Catalog, timeline: Timeline
) -> None:
    """The checks of a removed instance may come before it in a batch: the
    reaper's verdict must still see since when they were critical."""
    await register(catalog, "web-1", ttl("passing", reap="30s"))
    await set_status(catalog, "service:web-1", "critical", "down")  # critical just now
    service = catalog.state.instance("n1", "web-1")
    own = catalog.state.check("n1", "service:web-1")
    timeline.record(catalog.state.index + 1, [Change(own, None), Change(service, None)])
    assert timeline.events("web")[-1].kind == "deregistered"


async def test_an_index_a_hold_moved_past_the_store_still_blocks(catalog: Catalog) -> None:
    """A hold moves its topics one index past the store's: that index was
    reported, so a query on it must wait, not answer at once in a loop."""
    await register(catalog, "web-1", ttl("passing"))
    catalog.hold("n1", "service:web-1", "the store refused the result")
    topics = [("svc", "web")]
    held = catalog.state.index_of(topics)
    assert held > catalog.state.index
    loop = asyncio.get_running_loop()
    started = loop.time()
    await catalog.block(topics, held, wait=0.3)
    assert loop.time() - started >= 0.25


async def test_a_failing_record_listener_stops_nothing(catalog: Catalog) -> None:
    def broken(_index: int, _changes: list[Change]) -> None:
        raise RuntimeError("a bug in a listener")

    catalog.subscribe_records(broken)
    await register(catalog, "web-1", ttl("passing"))  # acknowledged and applied all the same
    assert catalog.state.instance("n1", "web-1") is not None


async def test_recorded_events_give_the_collector_nothing_to_walk(
    catalog: Catalog, timeline: Timeline
) -> None:
    """Events, their eviction order and the per-service rings are held
    without a tracked object per event or per service: at 1,000 changes/s
    over 10,000 services every such object would sit in the young generation
    until its next collection, which walks each one, and then in the older
    ones (agent/runtime.py)."""
    await register(catalog, "a-1", ttl("passing"))
    passing = catalog.state.checks[("n1", "service:a-1")]
    critical = msgspec.structs.replace(passing, status="critical")
    flips = [Change(passing, critical), Change(critical, passing)] * 250
    others = [Change(None, Service(node="n1", id=f"s{n}", name=f"svc-{n}")) for n in range(300)]
    gc.disable()
    try:
        before = len(gc.get_objects(0))
        for n, change in enumerate(flips + others):
            timeline.record(100 + n, [change])
        grown = len(gc.get_objects(0)) - before
    finally:
        gc.enable()
    assert timeline.statistics()["events"] == 801  # the registration, 500 flips, 300 more
    assert timeline.statistics()["services"] == 301
    assert grown < 50  # 800: a (seq, time, service) tuple per event, a deque per service
