"""`HOST:PORT` flags, parsed one way for every listener and every recursor.

A top-level private module, like `_exceptions`: any layer may import it, and
it imports no waypost package.
"""

from __future__ import annotations

from ._exceptions import ConfigError


def split_address(value: str, flag: str) -> tuple[str, int]:
    """`127.0.0.1:8500` or `[::1]:8500` -> (host, port).

    Raises:
        ConfigError: naming `flag`, when the value is not ADDRESS:PORT.
    """
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{flag} {value!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:8500 (port 0 picks one)"
        )
    return host, int(port)
