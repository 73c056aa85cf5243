"""The public surface: `__all__` lists exactly the public names, sorted."""

from __future__ import annotations

import types

import waypost
import waypost.client

CLIENT_NAMES = {
    "AsyncDiscovery",
    "AsyncServiceClient",
    "AsyncTransport",
    "Discovery",
    "HttpCheck",
    "Instance",
    "Registration",
    "ServiceClient",
    "TcpCheck",
    "Transport",
    "TtlCheck",
}


def test_client_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(waypost.client).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert set(waypost.client.__all__) == public
    assert len(waypost.client.__all__) == len(public)  # no duplicates


def test_top_level_exports_client_names() -> None:
    assert set(waypost.__all__) >= CLIENT_NAMES
    for name in CLIENT_NAMES:
        assert getattr(waypost, name) is getattr(waypost.client, name)
