"""The package's public surface is exactly `waypost.__all__`."""

import types

import waypost


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(waypost).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(waypost.__all__) - {"__version__"}
    assert sorted(waypost.__all__) == list(waypost.__all__) or waypost.__all__ == sorted(
        waypost.__all__, key=str.lower
    )
