"""The package's public surface is exactly `waypost.__all__`.

The client's names are loaded on first access (module `__getattr__`), so the
surface is read the way a user sees it, `dir()` and attribute access, not from
the module's `vars()`, which holds them only once used."""

import __future__

import types

import pytest

import waypost


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name in dir(waypost)
        if not name.startswith("_")
        and not isinstance(getattr(waypost, name), types.ModuleType | __future__._Feature)
    }
    assert public == set(waypost.__all__) - {"__version__"}
    assert len(waypost.__all__) == len(set(waypost.__all__))


def test_every_public_name_resolves() -> None:
    for name in waypost.__all__:
        assert getattr(waypost, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        waypost.no_such_name  # noqa: B018
