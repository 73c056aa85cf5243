"""Parsing etcd store URLs (no etcd needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from waypost._exceptions import ConfigError
from waypost.storage._etcd_config import parse_duration, parse_url


def test_defaults_and_endpoint_list() -> None:
    config = parse_url("etcd://10.0.0.1:2379,10.0.0.2,[::1]:2380")
    assert config.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379", "[::1]:2380")
    assert (config.prefix, config.lease_ttl, config.timeout, config.tls) == (
        "/waypost/",
        10,
        5.0,
        False,
    )
    assert config.user is None


@pytest.mark.parametrize(
    ("query", "field", "expected"),
    [
        ("prefix=/team-a", "prefix", "/team-a/"),
        ("prefix=x/", "prefix", "/x/"),
        ("lease_ttl=30s", "lease_ttl", 30),
        ("lease_ttl=1m", "lease_ttl", 60),
        ("timeout=1500ms", "timeout", 1.5),
        ("timeout=2", "timeout", 2.0),
        ("timeout=1m30s", "timeout", 90.0),
        ("lease_ttl=1m30s", "lease_ttl", 90),
    ],
)
def test_options(query: str, field: str, expected: object) -> None:
    assert getattr(parse_url(f"etcd://h:2379?{query}"), field) == expected


def test_credentials_and_tls_files(tmp_path: Path) -> None:
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_bytes(name.encode())
    url = f"etcds://app:s%40cret@h1:2379?ca={tmp_path}/ca.pem&cert={tmp_path}/c.pem&key={tmp_path}/k.pem"
    config = parse_url(url)
    assert (config.user, config.password, config.tls) == ("app", "s@cret", True)
    assert (config.ca, config.cert, config.key) == (b"ca.pem", b"c.pem", b"k.pem")
    assert "s@cret" not in repr(config)


def test_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    config = parse_url(f"etcd://h?user=app&password_file={tmp_path}/pw")
    assert (config.user, config.password) == ("app", "hunter2")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://", "names no etcd endpoint"),
        ("etcd://h:abc", "bad port"),
        ("etcd://h?bogus=1", "unknown option"),
        ("etcd://h?lease_ttl=1s", "minimum of 2s"),
        ("etcd://h?timeout=soon", "not a duration"),
        ("etcd://h?timeout=0", "not a duration"),
        ("etcd://h?timeout=-5s", "not a duration"),
        ("etcd://h?ca=/nonexistent/ca.pem", "cannot read the etcd ca file"),
        ("etcd://app@h", "has no password"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_url(url)


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_bytes(b"x")
    with pytest.raises(ConfigError, match="both cert= and key="):
        parse_url(f"etcd://h?cert={tmp_path}/c.pem")


def test_duration_units() -> None:
    assert parse_duration("250ms", "t") == 0.25
