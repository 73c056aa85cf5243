"""Storage keys: any ID survives the round trip and stays one key part."""

import gc

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.catalog import Check, Node, Service, codec


@given(st.text(min_size=1), st.text(min_size=1))
def test_service_key_round_trip(node: str, service_id: str) -> None:
    kind, parts = codec.split_key(codec.service_key(node, service_id))
    assert (kind, parts) == ("s", [node, service_id])


@given(st.text(alphabet="ab/%2F5", max_size=6), st.text(alphabet="ab/%2F5", max_size=6))
def test_two_part_keys_escape_each_part_as_esc_does(node: str, child: str) -> None:
    # service_key and check_key skip `esc` for parts with nothing to escape.
    assert codec.service_key(node, child) == f"s/{codec.esc(node)}/{codec.esc(child)}"
    assert codec.check_key(node, child) == f"c/{codec.esc(node)}/{codec.esc(child)}"


def test_escaping_is_exact() -> None:
    assert codec.check_key("n/1", "a%2Fb") == "c/n%2F1/a%252Fb"
    assert codec.split_key("c/n%2F1/a%252Fb") == ("c", ["n/1", "a%2Fb"])


def _stored(record: Service | Check) -> tuple[str, bytes]:
    entry = codec.put(record)
    assert entry.value is not None
    return entry.key, entry.value


def _decoded(record: Service | Check, create: int, modify: int) -> Service | Check:
    """What the state keeps of a stored record: decode_stored(), then stamp()."""
    decoded = codec.decode_stored(*_stored(record))
    codec.stamp(decoded, create, modify)
    assert isinstance(decoded, Service | Check)
    return decoded


def test_stored_records_decode_equal_with_their_repeated_values_shared() -> None:
    """decode_stored() and stamp() give decode() plus the indexes, field for field; two
    instances that repeat a node, a name, tags and meta share one copy of each."""
    first = Service(
        node="node-7", id="web-1", name="web", tags=("v1", "prod"), meta={"version": "1.2.3"}
    )
    second = msgspec.structs.replace(
        first, id="web-2", tags=("v1", "prod"), meta={"version": "1.2.3"}
    )
    a = _decoded(first, 3, 5)
    b = _decoded(second, 4, 6)
    assert a == msgspec.structs.replace(first, create_index=3, modify_index=5)
    assert b == msgspec.structs.replace(second, create_index=4, modify_index=6)
    assert a.node is b.node and a.name is b.name  # type: ignore[union-attr]
    assert a.tags is b.tags and a.meta is b.meta  # type: ignore[union-attr]
    assert a.tagged_addresses is b.tagged_addresses  # type: ignore[union-attr]
    ca = Check(
        node="node-7",
        check_id="c1",
        name="web health",
        service_id="web-1",
        service_name="web",
        service_tags=("v1", "prod"),
        output="ok",
    )
    cb = msgspec.structs.replace(ca, check_id="c2", service_tags=("v1", "prod"))
    x, y = _decoded(ca, 1, 1), _decoded(cb, 1, 2)
    assert x == msgspec.structs.replace(ca, create_index=1, modify_index=1)
    assert x.service_tags is y.service_tags is a.tags  # type: ignore[union-attr]
    assert x.name is y.name  # type: ignore[union-attr]


def test_different_values_are_never_shared() -> None:
    base = Service(node="n", id="s1", name="web", meta={"version": "1"}, tags=("a",))
    other = msgspec.structs.replace(base, id="s2", meta={"version": "2"}, tags=("b",))
    a = _decoded(base, 1, 1)
    b = _decoded(other, 1, 1)
    assert (a.meta, b.meta) == ({"version": "1"}, {"version": "2"})  # type: ignore[union-attr]
    assert (a.tags, b.tags) == (("a",), ("b",))  # type: ignore[union-attr]


def test_the_shared_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values seen once (unique meta) cannot grow the table without bound."""
    monkeypatch.setattr(codec, "_SHARED_MAX", 10)
    for i in range(50):
        record = Service(node="n", id=f"s{i}", name="web", meta={"id": str(i)})
        assert _decoded(record, 1, 1).meta == {"id": str(i)}  # type: ignore[union-attr]
        assert len(codec._shared) <= 10


def test_catalog_records_are_not_tracked_by_the_cyclic_collector() -> None:
    """gc=False (model.py): a million records must not be walked by every full collection."""
    record = _decoded(Service(node="n", id="s", name="web"), 1, 1)
    assert not gc.is_tracked(record)
    assert not gc.is_tracked(Check(node="n", check_id="c", name="c"))
    assert not gc.is_tracked(Node(name="n"))
