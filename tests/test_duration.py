"""The one Go duration grammar (waypost._duration) and everyone who reads or writes one."""

from __future__ import annotations

import math

import pytest

from waypost import ValidationError, _duration
from waypost.api import decode, encode
from waypost.catalog import CheckDefinition
from waypost.catalog.definitions import CheckRegistration, check_definition
from waypost.client._checks import go_duration, seconds
from waypost.dns.server import _ttl
from waypost.storage._etcd_config import parse_duration as etcd_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("10us", 1e-5),
        ("10µs", 1e-5),  # U+00B5, as Go prints it
        ("10μs", 1e-5),  # U+03BC, which Go reads too
        ("2ns", 2e-9),
        ("2h45m30.5s", 9930.5),
        ("1h1h", 7200.0),  # Go adds repeated units up
        (".5s", 0.5),
        ("1.s", 1.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("", 0.0),  # Consul: a field that was not set
        ("-5s", -5.0),
        ("+5s", 5.0),
        (" 10s ", 10.0),
        (10_000_000_000, 10.0),  # JSON numbers are nanoseconds, as Consul reads them
        (0, 0.0),
        ("2562047h", 2562047 * 3600.0),
    ],
)
def test_parse_accepts_go_durations(value: object, expected: float) -> None:
    assert math.isclose(_duration.parse(value, "Interval"), expected, abs_tol=1e-15)


@pytest.mark.parametrize(
    "value",
    [
        "1",  # only "0" may go without a unit
        "5.0",
        "1m30",
        "ten seconds",
        "s",
        "1d",
        "1 s",
        "--1s",
        "-",
        "1e3s",
        "2562048h",  # beyond Go's int64 nanoseconds
        2**63,
        True,
        1.5,  # JSON durations are integers of nanoseconds
        None,
        ["10s"],
    ],
)
def test_parse_refuses_anything_else_naming_the_field(value: object) -> None:
    with pytest.raises(ValidationError, match=r"^Interval: ") as info:
        _duration.parse(value, "Interval")
    assert str(value) in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("1.5", 1.5), ("-3", -3.0), ("1m30s", 90.0), ("250ms", 0.25)],
)
def test_unitless_numbers_take_the_callers_unit(value: str, expected: float) -> None:
    assert _duration.parse(value, "timeout", unitless="s") == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0s"),
        (1e-9, "1ns"),
        (999e-9, "999ns"),
        (1.5e-6, "1.5µs"),
        (0.25, "250ms"),
        (0.0015, "1.5ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (60, "1m0s"),
        (90, "1m30s"),
        (90.5, "1m30.5s"),
        (3600, "1h0m0s"),
        (5400, "1h30m0s"),
        (259200, "72h0m0s"),
        (-2, "-2s"),
        (0.1, "100ms"),
    ],
)
def test_format_writes_what_go_writes(value: float, text: str) -> None:
    assert _duration.format(value) == text
    assert math.isclose(_duration.parse(text, "round trip"), value, abs_tol=1e-15)


@pytest.mark.parametrize(
    "read",
    [
        lambda text: check_definition(CheckRegistration(ttl=text)).ttl,  # check bodies
        lambda text: etcd_duration(text, "timeout"),  # etcd store URL options
        lambda text: seconds(text),  # the client's check helpers
        lambda text: float(_ttl(text, "--dns-node-ttl")),  # DNS TTL flags
    ],
    ids=["check", "etcd-url", "client", "dns-ttl"],
)
@pytest.mark.parametrize(("text", "expected"), [("1m30s", 90.0), ("2h", 7200.0), ("45s", 45.0)])
def test_every_reader_speaks_the_same_grammar(read: object, text: str, expected: float) -> None:
    assert read(text) == expected  # type: ignore[operator]


def test_every_writer_speaks_the_same_grammar() -> None:
    definition = encode.definition(CheckDefinition(ttl=90, timeout=1.5))
    assert (definition["TTL"], definition["Timeout"]) == ("1m30s", "1.5s")
    assert definition["Interval"] == ""  # unset, as Consul shows it
    assert go_duration(90) == "1m30s"
    assert go_duration("1.5s") == "1.5s"


def test_wait_speaks_the_grammar_and_is_clamped_to_ten_minutes() -> None:
    assert decode.parse_wait("1m30s") == 90.0
    assert decode.parse_wait("2h") == 600.0
    assert decode.parse_wait("0s") == decode.parse_wait("0") == 300.0  # Consul: the default wait
    assert decode.parse_wait("-1s") == 300.0  # Consul's parseWait takes it; blocking: the default
