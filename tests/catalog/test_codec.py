"""Storage keys: any ID survives the round trip and stays one key part."""

from hypothesis import given
from hypothesis import strategies as st

from waypost.catalog import codec


@given(st.text(min_size=1), st.text(min_size=1))
def test_service_key_round_trip(node: str, service_id: str) -> None:
    kind, parts = codec.split_key(codec.service_key(node, service_id))
    assert (kind, parts) == ("s", [node, service_id])


def test_escaping_is_exact() -> None:
    assert codec.check_key("n/1", "a%2Fb") == "c/n%2F1/a%252Fb"
    assert codec.split_key("c/n%2F1/a%252Fb") == ("c", ["n/1", "a%2Fb"])
