"""The ADS server's protocol, spoken to by a test client as Envoy speaks it:
versions, ACKs, NACKs, stale nonces, pushes on catalog changes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from ..agentproc import AgentProcess
from .adsclient import AdsClient, endpoints_of, names_of, r
from .envoyproc import agent_with_xds


@pytest.fixture(scope="module")
def xds_agent() -> Iterator[AgentProcess]:
    proc = agent_with_xds("xds-node").start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


@pytest.fixture
def api(xds_agent: AgentProcess) -> Iterator[httpx.Client]:
    with xds_agent.client() as client:
        yield client


def register_pair(api: httpx.Client, front: str, back: str) -> None:
    """`front` calls `back` through an upstream; `back` has a TTL check we control."""
    up = [{"DestinationName": back, "LocalBindPort": 30001}]
    assert (
        api.put(
            "/v1/agent/service/register",
            json={
                "Name": front,
                "Port": 30000,
                "Connect": {"SidecarService": {"Port": 30010, "Proxy": {"Upstreams": up}}},
            },
        ).status_code
        == 200
    )
    assert (
        api.put(
            "/v1/agent/service/register",
            json={
                "Name": back,
                "Port": 30002,
                "Check": {"TTL": "60s", "Status": "passing"},
                "Connect": {
                    "SidecarService": {
                        "Port": 30011,
                        "Checks": [{"Name": "a", "AliasService": back}],
                    }
                },
            },
        ).status_code
        == 200
    )


def test_versions_acks_and_pushes(api: httpx.Client, xds_agent: AgentProcess) -> None:
    register_pair(api, "fa", "fb")
    client = AdsClient(xds_agent.grpc_address, "fa-sidecar-proxy")
    try:
        client.send(r.CLUSTER)
        clusters = client.next()
        assert clusters.type_url == r.CLUSTER and clusters.version_info and clusters.nonce
        assert sorted(names_of(clusters)) == ["local_app", "upstream:fb"]
        client.ack(clusters)
        assert client.quiet(0.5), "an ACK of the current version was answered"
        client.send(r.ENDPOINT, ["upstream:fb"])
        endpoints = client.next()
        assert endpoints_of(endpoints) == {"upstream:fb": [30011]}
        client.ack(endpoints, ["upstream:fb"])
        started = time.monotonic()
        api.put("/v1/agent/check/fail/service:fb")  # fb critical -> its sidecar's alias too
        pushed = client.next(timeout=2)
        assert time.monotonic() - started < 1.0
        assert pushed.type_url == r.ENDPOINT and endpoints_of(pushed) == {"upstream:fb": []}
        assert pushed.version_info != endpoints.version_info
        client.ack(pushed, ["upstream:fb"])
        api.put("/v1/agent/check/pass/service:fb")
        assert endpoints_of(client.next(timeout=2)) == {"upstream:fb": [30011]}
    finally:
        client.close()


def test_a_nack_is_logged_and_not_answered_again(
    api: httpx.Client, xds_agent: AgentProcess
) -> None:
    register_pair(api, "na", "nb")
    client = AdsClient(xds_agent.grpc_address, "na-sidecar-proxy")
    try:
        client.send(r.LISTENER)
        listeners = client.next()
        client.send(
            r.LISTENER, version="", nonce=listeners.nonce, error="cannot bind: Address in use"
        )
        assert client.quiet(1.0), "the rejected version was sent again"
        assert any(
            "xDS NACK from na-sidecar-proxy" in line and "cannot bind: Address in use" in line
            for line in xds_agent.output
        )
        # A change that touches the listeners makes a new version, which is sent.
        api.put(
            "/v1/agent/service/register",
            json={
                "Name": "na",
                "Port": 30000,
                "Connect": {
                    "SidecarService": {
                        "Port": 30010,
                        "Proxy": {"Upstreams": [{"DestinationName": "nb", "LocalBindPort": 30005}]},
                    }
                },
            },
        )
        fresh = client.next(timeout=2)
        assert fresh.type_url == r.LISTENER and fresh.version_info != listeners.version_info
    finally:
        client.close()


def test_a_stale_nonce_is_ignored_and_secrets_are_served(
    api: httpx.Client, xds_agent: AgentProcess
) -> None:
    register_pair(api, "sa", "sb")
    client = AdsClient(xds_agent.grpc_address, "sa-sidecar-proxy")
    try:
        client.send(r.SECRET, ["leaf:sa", "roots"])
        secrets = client.next()
        assert sorted(names_of(secrets)) == ["leaf:sa", "roots"]
        client.send(r.SECRET, ["roots"], nonce="not-the-last-one")
        assert client.quiet(0.5), "a request with a stale nonce was answered"
        client.send(
            r.SECRET, ["roots"], secrets.version_info, secrets.nonce
        )  # narrowed: new answer
        assert names_of(client.next()) == ["roots"]
    finally:
        client.close()


def test_an_unknown_node_gets_nothing_until_its_sidecar_is_registered(
    api: httpx.Client, xds_agent: AgentProcess
) -> None:
    client = AdsClient(xds_agent.grpc_address, "late-sidecar-proxy")
    try:
        client.send(r.CLUSTER)
        assert client.quiet(0.5)
        assert any(
            'no connect-proxy service with ID "late-sidecar-proxy"' in line
            for line in xds_agent.output
        )
        api.put(
            "/v1/agent/service/register",
            json={"Name": "late", "Port": 30020, "Connect": {"SidecarService": {"Port": 30021}}},
        )
        assert names_of(client.next(timeout=2)) == ["local_app"]
    finally:
        client.close()
