"""The package's public surface is exactly `waypost.__all__`."""

import __future__

import types

import waypost


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(waypost).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }
    assert public == set(waypost.__all__) - {"__version__"}
    assert len(waypost.__all__) == len(set(waypost.__all__))
