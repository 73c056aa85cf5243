"""The `k8s://` discovery source against the fake API server, through the public client API."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import waypost
from waypost.client import Router
from waypost.client._sources._k8s import K8sSource

from .fakeapi import FakeKubeApi
from .objects import endpoint_slice, ep


def url(kube: FakeKubeApi, **options: str) -> str:
    query = "&".join(
        f"{k}={v}" for k, v in {"kubeconfig": str(kube.kubeconfig()), **options}.items()
    )
    return f"k8s://?{query}"


async def next_change(it: AsyncIterator[list[waypost.Instance]]) -> list[waypost.Instance]:
    return await asyncio.wait_for(it.__anext__(), 10)


async def eventually(probe: Callable[[], Awaitable[object]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def summary(instances: list[waypost.Instance]) -> list[tuple[str, int, str]]:
    return sorted((i.address, i.port, i.health) for i in instances)


async def test_ready_unready_and_terminating_endpoints(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1"), ep("10.0.0.2", ready=False)]))
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        changes = discovery.watch("payment").__aiter__()
        assert summary(await next_change(changes)) == [("10.0.0.1", 8080, "passing")]

        kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1"), ep("10.0.0.2")]))
        assert summary(await next_change(changes)) == [
            ("10.0.0.1", 8080, "passing"),
            ("10.0.0.2", 8080, "passing"),
        ]
        # 10.0.0.1 terminates but still serves: draining; 10.0.0.2 turns unready: gone
        kube.put(
            endpoint_slice(
                "pay-1",
                "payment",
                [
                    ep("10.0.0.1", ready=False, serving=True, terminating=True),
                    ep("10.0.0.2", ready=False),
                ],
            )
        )
        latest = await next_change(changes)
        assert summary(latest) == [("10.0.0.1", 8080, "draining")]
        # terminating and no longer serving: gone
        kube.put(
            endpoint_slice(
                "pay-1", "payment", [ep("10.0.0.1", ready=False, serving=False, terminating=True)]
            )
        )
        assert await next_change(changes) == []


async def test_instances_carry_pod_node_and_zone(kube: FakeKubeApi) -> None:
    kube.put(
        endpoint_slice(
            "pay-1", "payment", [ep("10.0.0.1", pod="payment-7f-x", node="n3", zone="eu-1b")]
        )
    )
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        [instance] = await discovery.instances("payment")
    assert instance.meta["pod"] == "payment-7f-x"
    assert instance.meta["node"] == "n3"
    assert instance.zone == "eu-1b"
    assert instance.meta["k8s-namespace"] == "default"


async def test_port_by_name_else_the_first(kube: FakeKubeApi) -> None:
    ports = [("metrics", 9090), ("http", 8080)]
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")], ports=ports))
    async with waypost.AsyncDiscovery(url(kube, port="http"), share=False) as named:
        assert [i.port for i in await named.instances("payment")] == [8080]
    async with waypost.AsyncDiscovery(url(kube), share=False) as first:
        assert [i.port for i in await first.instances("payment")] == [9090]
    async with waypost.AsyncDiscovery(url(kube, port="grpc"), share=False) as missing:
        assert await missing.instances("payment") == []


async def test_slices_split_and_merge_with_duplicates(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("pay-a", "payment", [ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")]))
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        changes = discovery.watch("payment").__aiter__()
        assert len(await next_change(changes)) == 3
        # the controller splits: a new slice takes 10.0.0.3 before the old one drops it
        kube.put(endpoint_slice("pay-b", "payment", [ep("10.0.0.3"), ep("10.0.0.4")]))
        assert summary(await next_change(changes)) == [
            (f"10.0.0.{n}", 8080, "passing") for n in (1, 2, 3, 4)
        ]  # 10.0.0.3 once, though in two slices
        kube.put(endpoint_slice("pay-a", "payment", [ep("10.0.0.1"), ep("10.0.0.2")]))
        kube.put(endpoint_slice("pay-b", "payment", [ep("10.0.0.3"), ep("10.0.0.4")]))
        # merging back: one slice holds all; a duplicate that is unready in one
        # slice and ready in the other counts as ready
        kube.put(
            endpoint_slice(
                "pay-a",
                "payment",
                [ep(f"10.0.0.{n}") for n in (1, 2, 3)] + [ep("10.0.0.4", ready=False)],
            )
        )
        kube.delete("EndpointSlice", "default", "pay-b")
        await asyncio.sleep(0.3)
        assert summary(await discovery.instances("payment")) == [
            (f"10.0.0.{n}", 8080, "passing") for n in (1, 2, 3)
        ]


async def test_dual_stack_slices_give_both_families(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("pay-v4", "payment", [ep("10.0.0.1", pod="p1")]))
    kube.put(endpoint_slice("pay-v6", "payment", [ep("fd00::1", pod="p1")], address_type="IPv6"))
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        instances = await discovery.instances("payment")
    assert sorted(i.address for i in instances) == ["10.0.0.1", "fd00::1"]
    assert len({i.id for i in instances}) == 2
    assert {i.url for i in instances} == {"http://10.0.0.1:8080", "http://[fd00::1]:8080"}


@pytest.mark.parametrize("gone_as", ["status", "event"])
async def test_service_deleted_while_the_watch_was_down(kube: FakeKubeApi, gone_as: str) -> None:
    """410 as HTTP status and as an in-stream ERROR: relist, and what vanished is gone."""
    kube.gone_as = gone_as
    kube.tokens = {"token-1"}
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    kube.put(endpoint_slice("ord-1", "order", [ep("10.0.1.1")]))
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        assert len(await discovery.instances("payment")) == 1
        assert len(await discovery.instances("order")) == 1
        with kube.lock:  # atomically, as far as the client can tell:
            kube.close_watches()  # the watch drops,
            kube.delete("EndpointSlice", "default", "pay-1")  # the Service goes meanwhile,
            kube.put(endpoint_slice("ord-1", "order", [ep("10.0.1.1"), ep("10.0.1.2")]))
            kube.compact()  # and the history with it: the next watch gets 410
        changes = discovery.watch("payment").__aiter__()
        await next_change(changes)
        assert await next_change(changes) == []
        await eventually(lambda: _count(discovery, "order", 2))
    assert kube.requests[("list", "discovery.k8s.io", "endpointslices")] >= 2


async def watch_settled(discovery: waypost.AsyncDiscovery, namespace: str = "default") -> None:
    """Until the namespace's watch has had a bookmark: closing it then is not "closed at once"."""
    source = discovery.source
    assert isinstance(source, K8sSource) and source._shared is not None
    reflector = source._shared.watches[namespace].reflector
    seen = reflector.stats.bookmarks

    async def bookmarked() -> bool:
        return reflector.stats.bookmarks > seen

    await eventually(bookmarked)


async def _count(discovery: waypost.AsyncDiscovery, service: str, n: int) -> bool:
    return len(await discovery.instances(service)) == n


async def test_namespaces(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    kube.put(
        endpoint_slice("pay-1", "payment", [ep("10.9.0.1"), ep("10.9.0.2")], namespace="other")
    )
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        assert [i.address for i in await discovery.instances("payment")] == ["10.0.0.1"]
        other = await discovery.instances("payment.other")
        assert sorted(i.address for i in other) == ["10.9.0.1", "10.9.0.2"]
        assert {i.meta["k8s-namespace"] for i in other} == {"other"}
    async with waypost.AsyncDiscovery(url(kube, namespace="other"), share=False) as scoped:
        assert len(await scoped.instances("payment")) == 2


async def test_one_watch_per_namespace_shared_by_the_process(kube: FakeKubeApi) -> None:
    for name in ("payment", "order", "stock"):
        kube.put(endpoint_slice(f"{name}-1", name, [ep("10.0.0.1")]))
    config = url(kube)
    async with (
        waypost.AsyncDiscovery(config) as one,
        waypost.AsyncDiscovery(config + "&port=http") as two,  # another URL, same server
    ):
        for name in ("payment", "order", "stock"):
            assert len(await one.instances(name)) == 1
            assert len(await two.instances(name)) == 1
        await asyncio.sleep(0.2)
        assert kube.watch_count() == 1
        assert kube.requests[("list", "discovery.k8s.io", "endpointslices")] == 1
        await two.instances("payment.other")  # another namespace: its own watch
        await asyncio.sleep(0.2)
        assert kube.watch_count() == 2
    await asyncio.sleep(0.3)
    assert kube.watch_count() == 0  # the last user closed them


async def test_backs_off_on_429_and_5xx_then_recovers(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        changes = discovery.watch("payment").__aiter__()
        await next_change(changes)
        await watch_settled(discovery)
        kube.fail(429, times=1, verb="watch", retry_after=1)
        kube.fail(503, times=1, verb="watch")
        kube.close_watches()
        await asyncio.sleep(0.1)
        kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1"), ep("10.0.0.2")]))
        assert len(await next_change(changes)) == 2
    watches = [t for t, verb, _, _ in kube.log if verb == "watch"]
    gaps = [b - a for a, b in itertools.pairwise(watches)]
    assert len(watches) >= 4
    assert gaps[-3] >= 0.0 and gaps[-2] >= 0.8 and gaps[-1] >= 0.8, gaps  # backed off twice
    assert kube.requests[("list", "discovery.k8s.io", "endpointslices")] == 1  # no relist


async def test_a_watcher_waits_out_an_outage_with_the_reflector(
    kube: FakeKubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One failure reaches the watcher (its cache turns stale); then its next read
    # waits for the reflector's retry. Failing each read at once made the watcher back off
    # on its own too, and its delay added to the reflector's (a CI run's change came
    # more than 10 s after the API recovered).
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        changes = discovery.watch("payment").__aiter__()
        await next_change(changes)
        await watch_settled(discovery)
        source = discovery.source
        fetch, raised = source.fetch, 0

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal raised
            try:
                return await fetch(*args, **kwargs)
            except waypost.RegistryUnavailable:
                raised += 1
                raise

        monkeypatch.setattr(source, "fetch", counted)
        kube.fail(503, times=2, verb="watch")  # the reflector retries after 2.4-4.8 s
        kube.close_watches()
        await eventually(lambda: _stale(discovery, True))  # the read already waiting raised
        kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1"), ep("10.0.0.2")]))
        assert len(await next_change(changes)) == 2
        assert not (await discovery.entry("payment")).stale
    assert raised == 0  # no read that started during the outage failed


async def test_api_outage_serves_the_last_list_marked_stale(kube: FakeKubeApi) -> None:
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    async with waypost.AsyncDiscovery(url(kube), share=False, max_backoff=0.2) as discovery:
        await discovery.instances("payment")
        await watch_settled(discovery)
        kube.fail(503, times=1, verb="watch")
        kube.close_watches()
        await eventually(lambda: _stale(discovery, True))
        assert [i.address for i in await discovery.instances("payment")] == ["10.0.0.1"]
        await eventually(lambda: _stale(discovery, False))


async def _stale(discovery: waypost.AsyncDiscovery, stale: bool) -> bool:
    return (await discovery.entry("payment")).stale is stale


async def test_token_rotation_reread_after_401(kube: FakeKubeApi, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-1\n")
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    kubeconfig = kube.kubeconfig(token_file=token_file)
    async with waypost.AsyncDiscovery(f"k8s://?kubeconfig={kubeconfig}", share=False) as discovery:
        changes = discovery.watch("payment").__aiter__()
        await next_change(changes)
        await watch_settled(discovery)
        token_file.write_text("token-2\n")  # the kubelet rotated the projected token
        kube.tokens = {"token-2"}  # and the old one expired
        kube.close_watches()
        await asyncio.sleep(0.2)
        kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1"), ep("10.0.0.2")]))
        assert len(await next_change(changes)) == 2
    assert ("list", "discovery.k8s.io", "endpointslices") in kube.requests


async def test_in_cluster_configuration(
    kube: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from waypost._kube import config as kube_config
    from waypost.client._sources._k8s import K8sSource

    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("token-1")
    (sa / "namespace").write_text("shop")
    (sa / "ca.crt").write_text((kube.dir / "ca.crt").read_text())
    host, port = kube.url.removeprefix("https://").split(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(kube_config, "SERVICE_ACCOUNT_DIR", sa)
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.7")], namespace="shop"))
    source = K8sSource.from_url("k8s://")
    assert source.config.source == "in-cluster" and source.namespace == "shop"
    async with waypost.AsyncDiscovery(source) as discovery:
        assert [i.address for i in await discovery.instances("payment")] == ["10.0.0.7"]


async def test_router_sends_nothing_new_to_draining_instances(kube: FakeKubeApi) -> None:
    kube.put(
        endpoint_slice(
            "pay-1",
            "payment",
            [ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=True, terminating=True)],
        )
    )
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        instances = await discovery.instances("payment")
    assert {i.health for i in instances} == {"passing", "draining"}
    router = Router("payment", "round_robin", instances)
    inflight = router.pick()
    assert {router.pick().address for _ in range(10)} == {"10.0.0.1"}
    router.report(inflight, True, 0.01)  # a request that was in flight still reports fine


async def test_malformed_slice_is_skipped_and_the_rest_kept(
    kube: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    bad = endpoint_slice("pay-bad", "payment", [ep("10.0.0.9")])
    bad["endpoints"] = [{"conditions": {}}]  # no addresses: invalid
    kube.put(bad)
    kube.put(endpoint_slice("pay-ok", "payment", [ep("10.0.0.1")]))
    async with waypost.AsyncDiscovery(url(kube), share=False) as discovery:
        assert [i.address for i in await discovery.instances("payment")] == ["10.0.0.1"]
    assert "pay-bad" in caplog.text


async def test_unreachable_api_is_a_registry_error(tmp_path: Path) -> None:
    api = FakeKubeApi().start(tmp_path)
    kubeconfig = api.kubeconfig(token="wrong")
    api.tokens = {"right"}
    try:
        async with waypost.AsyncDiscovery(
            f"k8s://?kubeconfig={kubeconfig}", share=False, first_answer_timeout=8
        ) as d:
            with pytest.raises(waypost.RegistryUnavailable, match="401"):
                await d.instances("payment")
    finally:
        api.stop()


def test_bad_urls_fail_clearly(kube: FakeKubeApi, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option.*namspace"):
        waypost.AsyncDiscovery(url(kube, namspace="x"))
    with pytest.raises(waypost.ConfigError, match="no context 'nope'"):
        waypost.AsyncDiscovery(url(kube, context="nope"))
    broken = tmp_path / "broken"
    broken.write_text("clusters: [")
    with pytest.raises(waypost.ConfigError, match="not valid YAML"):
        waypost.AsyncDiscovery(f"k8s://?kubeconfig={broken}")


def test_sync_discovery(kube: FakeKubeApi) -> None:
    import threading

    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    with waypost.Discovery(url(kube), wait=30) as discovery:
        assert [i.address for i in discovery.instances("payment")] == ["10.0.0.1"]
        changes = discovery.watch("payment")
        assert len(next(changes)) == 1
        started = time.monotonic()
        timer = threading.Timer(
            0.3, kube.put, [endpoint_slice("pay-1", "payment", [ep("10.0.0.1"), ep("10.0.0.2")])]
        )
        timer.start()
        assert len(next(changes)) == 2
        assert time.monotonic() - started < 10  # the watch woke it, not the 30 s wait
        timer.join()


async def test_changes_close_together_are_not_spaced_by_min_interval(kube: FakeKubeApi) -> None:
    """The k8s:// source reads its own watch's store: the discovery's rate limit
    (min_interval, meant for a registry) must not hold back the next change."""
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    async with waypost.AsyncDiscovery(url(kube), share=False, min_interval=30) as discovery:
        changes = discovery.watch("payment").__aiter__()
        assert summary(await next_change(changes)) == [("10.0.0.1", 8080, "passing")]
        kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1"), ep("10.0.0.2")]))
        assert len(await next_change(changes)) == 2
        kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.2")]))
        assert summary(await next_change(changes)) == [("10.0.0.2", 8080, "passing")]
