"""Registration payloads, check definitions and defaults (no network)."""

from __future__ import annotations

import socket

import pytest

from waypost import HttpCheck, Registration, TcpCheck, TtlCheck
from waypost.client._checks import go_duration, seconds
from waypost.client._registration import default_agent


def test_payload_is_consul_pascal_case() -> None:
    reg = Registration(
        "payment",
        port=3000,
        address="10.1.2.3",
        agent="http://127.0.0.1:8500",
        tags=["v2"],
        meta={"zone": "a"},
        weight=3,
        check=HttpCheck("/health", interval="10s", timeout=2, deregister_after="1m"),
        handle_signals=False,
    )
    assert reg.id == f"payment-{socket.gethostname()}-3000"
    assert reg.payload() == {
        "ID": reg.id,
        "Name": "payment",
        "Address": "10.1.2.3",
        "Port": 3000,
        "Tags": ["v2"],
        "Meta": {"zone": "a"},
        "Weights": {"Passing": 3, "Warning": 1},
        "Check": {
            "CheckID": f"service:{reg.id}",
            "Name": "payment health",
            "HTTP": "http://10.1.2.3:3000/health",
            "Interval": "10s",
            "Timeout": "2s",
            "DeregisterCriticalServiceAfter": "1m0s",
        },
    }


def test_check_definitions() -> None:
    assert TcpCheck(interval=5).definition("::1", 80) == {"TCP": "[::1]:80", "Interval": "5s"}
    assert TtlCheck(ttl="1.5s").definition("h", 1) == {"TTL": "1.5s"}
    assert TtlCheck(ttl="15s").heartbeat_every == 5.0
    assert HttpCheck(method="HEAD").definition("h", 1)["Method"] == "HEAD"


def test_durations() -> None:
    assert seconds("1m30s") == 90.0
    assert seconds("250ms") == 0.25
    assert seconds(2) == 2.0
    assert go_duration(0.25) == "250ms"
    with pytest.raises(ValueError, match="duration"):
        seconds("ten seconds")


def test_registration_agent_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAYPOST_AGENT", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    assert default_agent(None) == "http://127.0.0.1:8500"
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "10.0.0.9:8500")
    assert default_agent(None) == "http://10.0.0.9:8500"
    monkeypatch.setenv("WAYPOST_AGENT", "http://agent:8500/")
    assert default_agent(None) == "http://agent:8500"
    assert default_agent("http://x:1") == "http://x:1"


async def test_unreachable_agent_is_a_registration_error() -> None:
    from waypost import RegistrationError

    reg = Registration("payment", port=1, agent="http://127.0.0.1:9", handle_signals=False)
    with pytest.raises(RegistrationError, match="cannot reach agent"):
        async with reg:
            pass
    with pytest.raises(RegistrationError, match="cannot reach agent"), reg:
        pass
