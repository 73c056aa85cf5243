"""The reflector's protocol, request by request, against the fake API server."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest

from waypost._kube import SLICES, collection
from waypost._kube.api import ApiClient, Obj
from waypost._kube.config import load_config
from waypost._kube.reflector import Backoff, Reflector, Store

from .fakeapi import FakeKubeApi
from .objects import endpoint_slice, ep, service

PATH = collection(SLICES, "endpointslices", "default")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.synced = 0

    def on_event(self, kind: str, obj: Obj, old: Obj | None) -> None:
        self.events.append((kind, obj["metadata"]["name"]))

    def on_synced(self) -> None:
        self.synced += 1


@contextlib.asynccontextmanager
async def running(
    kube: FakeKubeApi, **options: object
) -> AsyncIterator[tuple[Reflector, Recorder]]:
    client = ApiClient(load_config(str(kube.kubeconfig())))
    recorder = Recorder()
    reflector = Reflector(client, PATH, recorder, rng=random.Random(7), **options)  # type: ignore[arg-type]
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(reflector.synced.wait(), 10)
        yield reflector, recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


async def until(check: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def queries(kube: FakeKubeApi, verb: str) -> list[dict[str, str]]:
    return [q for _, v, _, q in kube.log if v == verb]


async def test_lists_in_pages_then_watches_from_the_list_version(kube: FakeKubeApi) -> None:
    for n in range(5):
        kube.put(endpoint_slice(f"s{n}", "payment", [ep(f"10.0.0.{n}")]))
    async with running(kube, page_size=2) as (_, recorder):
        assert sorted(name for _, name in recorder.events) == [f"s{n}" for n in range(5)]
        await until(lambda: queries(kube, "watch"))
    lists = queries(kube, "list")
    assert [q.get("limit") for q in lists] == ["2", "2", "2"]
    assert "continue" not in lists[0] and all("continue" in q for q in lists[1:])
    watch = queries(kube, "watch")[0]
    assert watch["resourceVersion"] == str(kube.rv)
    assert watch["allowWatchBookmarks"] == "true"
    assert 300 <= int(watch["timeoutSeconds"]) < 600
    assert recorder.synced == 1


async def test_expired_continue_token_restarts_the_list_without_a_limit(kube: FakeKubeApi) -> None:
    for n in range(4):
        kube.put(endpoint_slice(f"s{n}", "payment", [ep(f"10.0.0.{n}")]))
    original = kube._list

    def list_then_compact(*args: object) -> object:
        response = original(*args)  # type: ignore[arg-type]
        if not args[3].get("continue"):  # type: ignore[union-attr]
            kube.compact()  # the token of this first page is now too old
        return response

    kube._list = list_then_compact  # type: ignore[method-assign]
    async with running(kube, page_size=2) as (_, recorder):
        assert sorted(name for _, name in recorder.events) == [f"s{n}" for n in range(4)]
    lists = queries(kube, "list")
    assert lists[1].get("continue") and "limit" not in lists[2] and "continue" not in lists[2]


async def test_bookmarks_move_the_version_and_a_timed_out_watch_resumes(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("s0", "payment", [ep("10.0.0.1")]))
    async with running(kube) as (reflector, recorder):
        listed = reflector.stats.resource_version
        kube.put(service("unrelated"))  # moves the version; this watch gets no event for it
        moved = str(kube.rv)
        await until(lambda: reflector.stats.resource_version == moved)  # a BOOKMARK carried it
        assert recorder.events == [("ADDED", "s0")] and moved != listed
        kube.close_watches()  # the watch ends normally (its timeout)
        await until(lambda: len(queries(kube, "watch")) >= 2)
        assert queries(kube, "watch")[1]["resourceVersion"] == moved
        kube.put(endpoint_slice("s0", "payment", [ep("10.0.0.2")]))
        await until(lambda: len(recorder.events) == 2)
    assert len(queries(kube, "list")) == 1  # never relisted
    assert recorder.events[-1] == ("MODIFIED", "s0")


@pytest.mark.parametrize("gone_as", ["status", "event"])
async def test_410_relists_and_reports_what_was_deleted_in_the_gap(
    kube: FakeKubeApi, gone_as: str
) -> None:
    kube.gone_as = gone_as
    kube.put(endpoint_slice("s0", "payment", [ep("10.0.0.1")]))
    kube.put(endpoint_slice("s1", "payment", [ep("10.0.0.2")]))
    async with running(kube) as (reflector, recorder):
        with kube.lock:
            kube.close_watches()
            kube.delete("EndpointSlice", "default", "s1")
            kube.put(endpoint_slice("s2", "payment", [ep("10.0.0.3")]))
            kube.compact()
        await until(
            lambda: ("DELETED", "s1") in recorder.events and ("ADDED", "s2") in recorder.events
        )
        assert reflector.stats.relists_gone == 1
        assert sorted(reflector.store.objects) == ["default/s0", "default/s2"]
    assert len(queries(kube, "list")) == 2
    assert recorder.synced == 2


async def test_error_event_other_than_410_backs_off_and_relists(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("s0", "payment", [ep("10.0.0.1")]))
    async with running(kube, backoff=Backoff(random.Random(1), initial=0.05)) as (reflector, _):
        await until(lambda: reflector.stats.bookmarks >= 1)
        kube.fail(403, times=1, verb="watch")
        kube.close_watches()
        await until(lambda: len(queries(kube, "list")) == 2)
        assert reflector.stats.failures == 1 and "403" in reflector.stats.last_error


async def test_a_watch_that_closes_at_once_counts_as_a_failure(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("s0", "payment", [ep("10.0.0.1")]))
    kube.bookmark_interval = 60
    async with running(
        kube, min_watch_timeout=0.1, backoff=Backoff(random.Random(1), initial=0.3)
    ) as (reflector, _):
        await until(lambda: reflector.stats.failures >= 1)  # timeoutSeconds=0: closes at once
        assert len(queries(kube, "list")) == 1


def test_backoff_doubles_to_the_cap_with_jitter_and_resets_after_quiet() -> None:
    now = [0.0]
    backoff = Backoff(random.Random(3), now=lambda: now[0])
    delays = [backoff.next() for _ in range(8)]
    assert 0.8 <= delays[0] < 1.6
    assert all(0.8 * 2**n <= d < 1.6 * 2**n for n, d in enumerate(delays[:5]))
    assert 30 <= delays[-1] < 60
    assert backoff.next(at_least=99) == 99  # Retry-After wins when longer
    now[0] += 121
    assert backoff.next() < 1.6


def test_store_replace_reports_deletions_additions_and_modifications() -> None:
    store = Store()
    store.replace([{"metadata": {"namespace": "a", "name": "x", "resourceVersion": "1"}}])
    changes = store.replace(
        [
            {"metadata": {"namespace": "a", "name": "x", "resourceVersion": "2"}},
            {"metadata": {"namespace": "a", "name": "y", "resourceVersion": "3"}},
        ]
    )
    assert [(k, o["metadata"]["name"]) for k, o, _ in changes] == [
        ("MODIFIED", "x"),
        ("ADDED", "y"),
    ]
    changes = store.replace([])
    assert sorted((k, o["metadata"]["name"]) for k, o, _ in changes) == [
        ("DELETED", "x"),
        ("DELETED", "y"),
    ]
