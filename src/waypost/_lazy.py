"""Names a package imports on first use (PEP 562 module `__getattr__`).

Every `waypost ...` command imports the package tree it starts from, and most
of them never use the heavy parts (the agent's runtime, the catalog's storage
side, the client library): those are found the first time they are asked for
and then kept as plain attributes. A top-level private module: any layer may
import it; it imports no package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A `__getattr__` for `package` that imports each name of `where` from its
    submodule (relative, e.g. ".runtime") and keeps it on the package."""

    def __getattr__(name: str) -> Any:
        submodule = where.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(submodule, package), name)
        setattr(sys.modules[package], name, value)  # found once, then a plain attribute
        return value

    return __getattr__
