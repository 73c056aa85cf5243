"""The decode fast path (api/canonical.py): Consul-spelled bodies straight into
the core's structs, everything else through the fold, with the same result."""

from __future__ import annotations

import msgspec
import pytest

from waypost._exceptions import ValidationError
from waypost.api import canonical, decode
from waypost.catalog.definitions import CheckRegistration, ServiceRegistration

CONSUL_BODY = (
    b'{"ID": "web-1", "Name": "web", "Tags": ["v1"], "Address": "10.0.0.1", "Port": 8080,'
    b' "Meta": {"version": "1.2"}, "EnableTagOverride": true, "Kind": "",'
    b' "Weights": {"Passing": 3, "Warning": 1},'
    b' "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 8080}},'
    b' "Check": {"CheckID": "c1", "Name": "http", "HTTP": "http://10.0.0.1:8080/h",'
    b' "Method": "GET", "Header": {"X-A": ["1"]}, "Interval": "10s", "Timeout": 2000000000,'
    b' "DeregisterCriticalServiceAfter": "1m", "TLSSkipVerify": true, "Status": "passing",'
    b' "SuccessBeforePassing": 2, "FailuresBeforeWarning": 1, "FailuresBeforeCritical": 3},'
    b' "Checks": [{"TTL": "30s", "Notes": "n", "Output": "o", "ServiceID": "web-1"},'
    b' {"TCP": "10.0.0.1:8080", "Interval": "5s"}, {"GRPC": "10.0.0.1:9", "GRPCUseTLS": true,'
    b' "Interval": "5s"}, {"AliasService": "db"}, {"Args": ["/bin/true"], "ScriptArgs": [],'
    b' "Interval": "5s", "ID": "s", "Node": "n", "Body": "b"}]}'
)


@pytest.mark.parametrize("kind", [canonical._SERVICE, canonical._CHECK])
def test_every_field_has_consuls_spelling(kind: type[msgspec.Struct]) -> None:
    for field in msgspec.structs.fields(kind):
        assert field.encode_name != field.name, field.name  # named in CONSUL_NAMES
        assert decode._fold_key(field.encode_name) == field.name  # and folds back to it


def _plain(value: object) -> object:
    """Field names and values, recursively (the twins differ from the core's structs by type)."""
    if isinstance(value, msgspec.Struct):
        return {k: _plain(v) for k, v in msgspec.structs.asdict(value).items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _same(a: msgspec.Struct, b: msgspec.Struct) -> bool:
    return _plain(a) == _plain(b)


def test_a_consul_body_takes_the_fast_path_with_the_folds_result() -> None:
    fast = canonical.decode(CONSUL_BODY, ServiceRegistration)
    assert isinstance(fast, ServiceRegistration)  # the plans read it as the core's struct
    assert isinstance(fast.check, CheckRegistration) and len(fast.checks) == 5
    folded = decode._convert(CONSUL_BODY, ServiceRegistration)
    assert _same(fast, folded)
    assert fast.check.deregistercriticalserviceafter == "1m" and fast.weights is not None
    assert fast.weights.passing == 3 and fast.taggedaddresses["lan"].port == 8080
    check = canonical.decode(
        b'{"Name": "t", "TTL": "10s", "ServiceID": "web-1"}', CheckRegistration
    )
    assert check is not None and check.serviceid == "web-1" and check.ttl == "10s"


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "web", "port": 80}',  # another spelling
        b'{"Name": "web", "service_id": "x"}',
        b'{"Name": "web", "Check": {"ttl": "10s"}}',  # another spelling, nested
        b'{"Name": "web", "Tags": null, "Meta": null}',  # nulls: the fold drops them
        b'{"Name": "web", "Namespace": "default"}',  # a key waypost does not know
        b'{"Name": "web", "Proxy": {"DestinationServiceName": "db"}, "Kind": "connect-proxy"}',
        b'{"Name": "web", "Connect": {"SidecarService": {}}}',
        b"",
    ],
)
def test_any_other_body_goes_through_the_fold(body: bytes) -> None:
    assert canonical.decode(body, ServiceRegistration) is None
    assert _same(
        decode.decode(body, ServiceRegistration), decode._convert(body, ServiceRegistration)
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"Name": "web", "Port": "80"}', "Expected `int`, got `str` - at `port`"),
        (b'{"Name": "web", "Checks": [{"Interval": []}]}', "at `checks[0].interval`"),
        (b'{"Name": "web", "Meta": {"a": {"b": 1}}}', "Expected `str`, got `object`"),
        (b'{"Name": "web"', "invalid JSON"),
        (b"[1]", "expected a JSON object"),
    ],
)
def test_a_refused_body_gets_the_folds_error(body: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match="Request decode failed") as err:
        decode.decode(body, ServiceRegistration)
    assert message in str(err.value)
