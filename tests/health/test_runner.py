"""TTL expiry, thresholds, reaping: driven by a fake clock, no sleeping."""

from __future__ import annotations

import asyncio
import random

import pytest

from waypost import NotFoundError, StorageError, ValidationError
from waypost.catalog import CheckDefinition
from waypost.catalog.aclidentity import Identity
from waypost.catalog.authz import Resolver
from waypost.health import FakeClock, HealthRunner
from waypost.health.thresholds import Thresholds

from ..helpers import check, node, open_catalog, service


class ScriptedProbe:
    """Answers each run with the next scripted result (the last one repeats)."""

    def __init__(self, *results: str) -> None:
        self.results = list(results)

    async def __call__(self, defn: CheckDefinition) -> tuple[str, str]:
        status = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        return status, f"scripted {status}"


async def setup(
    defn: CheckDefinition, status: str = "critical", probe: ScriptedProbe | None = None
):
    catalog = await open_catalog()
    clock = FakeClock()
    probes = {"tcp": probe or ScriptedProbe("critical")}
    runner = HealthRunner(
        catalog, "n1", clock=clock, rng=random.Random(7), reap_interval=1.0, probes=probes
    )
    await catalog.put(
        node(), service("web-1"), check("c1", "web-1", status=status, definition=defn)
    )
    await runner.start()
    return catalog, clock, runner


def status(catalog, cid: str = "c1") -> str:
    return catalog.state.checks[("n1", cid)].status


async def test_ttl_expires_to_critical_and_heartbeat_restarts_it() -> None:
    catalog, clock, runner = await setup(CheckDefinition(ttl=10))
    await runner.heartbeat("c1", "passing", "ok")
    await clock.advance(9.9)
    assert status(catalog) == "passing"
    await runner.heartbeat("c1", "passing", "still ok")  # resets the timer
    await clock.advance(9.9)
    assert status(catalog) == "passing"
    await clock.advance(0.2)
    assert status(catalog) == "critical"
    assert catalog.state.checks[("n1", "c1")].output == "TTL expired"
    await runner.heartbeat("c1", "warning", "slow")
    assert status(catalog) == "warning"
    await clock.advance(10.1)
    assert status(catalog) == "critical"
    await runner.stop()


async def test_heartbeat_errors() -> None:
    catalog, _clock, runner = await setup(CheckDefinition(ttl=10))
    with pytest.raises(NotFoundError):
        await runner.heartbeat("ghost", "passing", "")
    await catalog.put(
        check("c2", "web-1", definition=CheckDefinition(tcp="127.0.0.1:1", interval=5))
    )
    with pytest.raises(ValidationError, match="does not have associated TTL"):
        await runner.heartbeat("c2", "passing", "")
    await runner.stop()


async def test_deregister_critical_service_after() -> None:
    catalog, clock, runner = await setup(CheckDefinition(ttl=5, deregister_critical_after=30))
    await clock.advance(6)  # TTL expires: critical from t=5
    assert status(catalog) == "critical"
    await clock.advance(20)
    assert ("n1", "web-1") in catalog.state.services
    await clock.advance(15)
    assert ("n1", "web-1") not in catalog.state.services
    assert ("n1", "c1") not in catalog.state.checks
    await runner.stop()


async def test_the_reaper_deregisters_as_the_agent_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ACLs on, reaping is a write as the agent's identity: refused (the
    anonymous token, default deny), the instance stays and the refusal is
    logged once however many passes retry it; allowed, the next pass reaps."""
    catalog, clock, runner = await setup(CheckDefinition(ttl=5, deregister_critical_after=10))
    runner.identity = Identity(Resolver(catalog.state.acl, "dc1", False), lambda: ("", "no token"))
    await clock.advance(30)  # critical since t=5: due at t=15, fifteen passes since
    assert ("n1", "web-1") in catalog.state.services
    blocked = [r.getMessage() for r in caplog.records if "blocked by ACLs" in r.getMessage()]
    assert len(blocked) == 1 and "Service web-1 deregistration blocked" in blocked[0]
    assert r"'node:write' on \"n1\"" in blocked[0]
    runner.identity = Identity(Resolver(catalog.state.acl, "dc1", True), lambda: ("", "no token"))
    await clock.advance(1)
    assert ("n1", "web-1") not in catalog.state.services
    await runner.stop()


async def test_recovery_resets_the_reap_timer() -> None:
    """An interval check critical for 20 of the 25 s allowed, passing once, then
    critical again: it is reaped 25 s after the second spell began, not on the
    first one's timer. (Its task runs throughout, so only the reaper can reset.)"""
    probe = ScriptedProbe("critical", "critical", "passing", "critical")
    defn = CheckDefinition(tcp="127.0.0.1:1", interval=10, deregister_critical_after=25)
    catalog, clock, runner = await setup(defn, "passing", probe=probe)
    for runs, expected in ((1, "critical"), (2, "critical"), (3, "passing"), (4, "critical")):
        await clock.advance(10)  # one run per interval, the first somewhere in the first
        assert ("n1", "web-1") in catalog.state.services, "reaped on the first spell's timer"
        assert (runner.runs, status(catalog)) == (runs, expected)
    await clock.advance(10)  # at most 20 s into the second spell
    assert ("n1", "web-1") in catalog.state.services
    await clock.advance(20)  # more than 25 s into it
    assert ("n1", "web-1") not in catalog.state.services
    await runner.stop()


async def test_a_heartbeat_recovery_resets_the_reap_timer() -> None:
    """The same for a TTL check: critical for 7 of the 10 s allowed, a
    heartbeat, then critical anew; reaped 10 s after the second spell began."""
    catalog, clock, runner = await setup(
        CheckDefinition(ttl=5, deregister_critical_after=10), "passing"
    )
    await clock.advance(12)  # critical since the TTL ran out at t=5
    assert status(catalog) == "critical"
    await runner.heartbeat("c1", "passing", "")  # TTL runs out again at t=17
    await clock.advance(4)  # t=16: passing
    await clock.advance(5)  # t=21: critical since 17, 16 s after the first spell began
    assert ("n1", "web-1") in catalog.state.services, "reaped on the first spell's timer"
    assert status(catalog) == "critical"
    await clock.advance(7)  # t=28: critical for 11 s
    assert ("n1", "web-1") not in catalog.state.services
    await runner.stop()


@pytest.mark.parametrize(
    ("results", "kwargs", "expected"),
    [
        (["critical"], {}, "critical"),
        (["passing", "critical", "critical"], {"failures_before_critical": 3}, "passing"),
        (
            ["passing", "critical", "critical", "critical"],
            {"failures_before_critical": 3},
            "critical",
        ),
        (
            ["passing", "critical"],
            {"failures_before_warning": 1, "failures_before_critical": 3},
            "warning",
        ),
        (["critical", "passing"], {"success_before_passing": 2}, "critical"),
        (["critical", "passing", "passing"], {"success_before_passing": 2}, "passing"),
        (
            ["passing", "critical", "passing", "critical"],
            {"failures_before_critical": 2},
            "passing",
        ),
        (["passing", "warning"], {"failures_before_critical": 5}, "warning"),
    ],
)
def test_thresholds(results: list[str], kwargs: dict[str, int], expected: str) -> None:
    t = Thresholds("critical", **kwargs)
    for r in results:
        reported = t.feed(r)
    assert reported == expected


async def test_interval_check_runs_staggered_then_every_interval() -> None:
    probe = ScriptedProbe("passing", "critical", "critical", "passing")
    defn = CheckDefinition(tcp="127.0.0.1:1", interval=10, failures_before_critical=2)
    catalog, clock, runner = await setup(defn, probe=probe)
    assert runner.runs == 0
    await clock.advance(10)  # the first run lands somewhere inside the first interval
    assert (runner.runs, status(catalog)) == (1, "passing")
    await clock.advance(10)
    assert (runner.runs, status(catalog)) == (2, "passing")  # one failure: below the threshold
    await clock.advance(10)
    assert (runner.runs, status(catalog)) == (3, "critical")
    assert catalog.state.checks[("n1", "c1")].output == "scripted critical"
    await clock.advance(10)
    assert (runner.runs, status(catalog)) == (4, "passing")
    await runner.stop()


async def test_refresh_stops_removed_checks() -> None:
    catalog, _clock, runner = await setup(CheckDefinition(ttl=10))
    assert runner.statistics()["running_checks"] == 1
    await catalog.deregister_check("n1", "c1")
    runner.refresh(["c1"])
    assert runner.statistics()["running_checks"] == 0
    await runner.stop()


async def test_a_check_whose_task_ended_is_restarted_on_reregistration() -> None:
    """Its task ends when the check vanishes under it (catalog deregister, another agent)."""
    probe = ScriptedProbe("passing")
    defn = CheckDefinition(tcp="127.0.0.1:1", interval=10)
    catalog, clock, runner = await setup(defn, probe=probe)
    await catalog.deregister_check("n1", "c1")  # not through the runner
    await clock.advance(20)  # the task's next report finds no check and ends
    await catalog.put(check("c1", "web-1", status="critical", definition=defn))
    runner.refresh(["c1"])
    await clock.advance(20)
    assert status(catalog) == "passing"
    await runner.stop()


class BrokenProbe(ScriptedProbe):
    """Raises (a probe's bug) on the runs named, else answers as scripted."""

    def __init__(self, raises_on: set[int], *results: str) -> None:
        super().__init__(*results)
        self.raises_on, self.calls = raises_on, 0

    async def __call__(self, defn: CheckDefinition) -> tuple[str, str]:
        self.calls += 1
        if self.calls in self.raises_on:
            raise RuntimeError("a bug in the probe")
        return await super().__call__(defn)


async def test_a_probe_that_raises_fails_the_check_closed_and_it_runs_on() -> None:
    probe = BrokenProbe({2}, "passing")
    defn = CheckDefinition(tcp="127.0.0.1:1", interval=10)
    catalog, clock, runner = await setup(defn, status="passing", probe=probe)
    await clock.advance(10)
    assert (runner.runs, status(catalog)) == (1, "passing")
    await clock.advance(10)
    assert (runner.runs, status(catalog)) == (2, "critical")
    output = catalog.state.checks[("n1", "c1")].output
    assert output == "the tcp probe failed: RuntimeError('a bug in the probe')"
    await clock.advance(10)
    assert (runner.runs, status(catalog)) == (3, "passing")  # the check ran on
    await runner.stop()


async def test_a_check_task_that_dies_of_a_bug_starts_again_after_a_growing_delay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Anything that escapes a check's loop (a bug: not a probe's failure,
    not a store's refusal) ends its task; the runner logs it and starts the
    task again after RESTART_START, then twice as long at the next death."""
    probe = ScriptedProbe("passing")
    defn = CheckDefinition(tcp="127.0.0.1:1", interval=10)
    catalog, clock, runner = await setup(defn, status="critical", probe=probe)
    report = runner._report
    failures = 2

    async def failing_report(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("a bug after the probe")
        return await report(*args, **kwargs)

    monkeypatch.setattr(runner, "_report", failing_report)
    await clock.advance(100)
    assert runner._deaths == {"c1": 2}
    restarts = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert restarts == [
        "check task failed, restarting: check=c1 in=1s",
        "check task failed, restarting: check=c1 in=2s",
    ]
    assert status(catalog) == "passing"  # the third task's result was stored
    assert not runner._tasks["c1"][1].done()  # and it runs on
    await catalog.deregister_check("n1", "c1")
    await clock.advance(1)
    assert "c1" not in runner._tasks and not runner._deaths  # a removed check's count goes
    await runner.stop()
    assert not runner._restarts


async def test_unfired_watch_futures_do_not_accumulate() -> None:
    from waypost.catalog.watch import service_topic

    catalog, _clock, runner = await setup(CheckDefinition(ttl=10))
    before = catalog.watches.statistics()["watched_topics"]
    for n in range(20):
        await catalog.block([service_topic(f"nope-{n}")], 10**9, 0.001)
    assert catalog.watches.statistics()["watched_topics"] == before
    await runner.stop()


async def _output_after_restart(catalog, runner: HealthRunner, url: str) -> str:  # type: ignore[no-untyped-def]
    """Stop the runner and the catalog (a graceful stop), then the check's
    output as a restarted agent finds it in the store."""
    await runner.stop()
    await catalog.close()
    reopened = await open_catalog(url)
    try:
        return reopened.state.checks[("n1", "c1")].output
    finally:
        await reopened.close()


async def _sqlite_runner(url: str, output_interval: float) -> tuple:
    catalog = await open_catalog(url)
    clock = FakeClock()
    runner = HealthRunner(catalog, "n1", clock=clock, output_interval=output_interval)
    await catalog.put(
        node(), service("web-1"), check("c1", "web-1", status="critical", definition=_TTL)
    )
    await runner.start()
    return catalog, clock, runner


async def _settled(catalog, index: int) -> int:
    """The index once a write the runner started in a task (if any) has landed."""
    for _ in range(50):
        await asyncio.sleep(0.01)
        if catalog.state.index != index:
            break
    return catalog.state.index


_TTL = CheckDefinition(ttl=10_000)  # never expires in these tests


async def test_an_output_alone_is_stored_once_per_check_update_interval(tmp_path) -> None:
    """Consul's check_update_interval: a changed output is shown at once and
    stored at most once per interval, with whatever it is by then."""
    url = f"sqlite://{tmp_path}/c.db"
    catalog, clock, runner = await _sqlite_runner(url, output_interval=300)
    await runner.heartbeat("c1", "passing", "v1")  # a new status: stored at once
    stored_at = catalog.state.index
    for note in ("v2", "v3"):
        await runner.heartbeat("c1", "passing", note)
    assert catalog.state.checks[("n1", "c1")].output == "v3"  # shown here at once
    await clock.advance(299)
    assert await _settled(catalog, stored_at) == stored_at  # not a write (nor a wake-up) per note
    await clock.advance(2)
    assert await _settled(catalog, stored_at) == stored_at + 1  # one write for both
    assert await _output_after_restart(catalog, runner, url) == "v3"


async def test_a_new_status_stores_the_output_and_cancels_the_deferred_write(tmp_path) -> None:
    url = f"sqlite://{tmp_path}/c.db"
    catalog, clock, runner = await _sqlite_runner(url, output_interval=300)
    await runner.heartbeat("c1", "passing", "v1")
    await runner.heartbeat("c1", "passing", "v2")  # deferred
    await runner.heartbeat("c1", "warning", "slow")  # stored now, with its output
    stored_at = catalog.state.index
    await clock.advance(301)
    assert await _settled(catalog, stored_at) == stored_at  # nothing left to store
    assert await _output_after_restart(catalog, runner, url) == "slow"


async def test_check_update_interval_zero_stores_every_output(tmp_path) -> None:
    url = f"sqlite://{tmp_path}/c.db"
    catalog, _clock, runner = await _sqlite_runner(url, output_interval=0)
    await runner.heartbeat("c1", "passing", "v1")
    await runner.heartbeat("c1", "passing", "v2")
    await _settled(catalog, catalog.state.index)  # the write runs in a task of its own
    assert await _output_after_restart(catalog, runner, url) == "v2"


async def test_an_output_the_store_refused_is_tried_again_an_interval_later(tmp_path) -> None:
    url = f"sqlite://{tmp_path}/c.db"
    catalog, clock, runner = await _sqlite_runner(url, output_interval=300)
    await runner.heartbeat("c1", "passing", "v1")
    await runner.heartbeat("c1", "passing", "v2")  # deferred
    stored_at = catalog.state.index
    real_commit = catalog.storage.commit

    async def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise StorageError("the disk is full (test)")

    catalog.storage.commit = refuse  # type: ignore[method-assign]
    await clock.advance(301)  # the deferred write fails
    await _settled(catalog, stored_at)
    catalog.storage.commit = real_commit  # type: ignore[method-assign]
    await clock.advance(301)  # and is tried again, though the output did not change
    assert await _settled(catalog, stored_at) == stored_at + 1
    assert await _output_after_restart(catalog, runner, url) == "v2"


async def test_a_graceful_stop_stores_the_outputs_not_stored_yet(tmp_path) -> None:
    url = f"sqlite://{tmp_path}/c.db"
    catalog, _clock, runner = await _sqlite_runner(url, output_interval=300)
    await runner.heartbeat("c1", "passing", "v1")
    await runner.heartbeat("c1", "passing", "v2")  # deferred by 5 minutes
    assert await _output_after_restart(catalog, runner, url) == "v2"  # a restart finds it
