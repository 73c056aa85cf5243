"""The source interface shared by every discovery backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .._instance import Instance


@dataclass(frozen=True, slots=True)
class Answer:
    """One read: the registry's index for the result and the instances.

    `index` is 0 for sources without blocking queries.
    """

    index: int
    instances: tuple[Instance, ...]


class Source(Protocol):
    """Where instance lists come from.

    `blocking` sources accept `index`/`wait` and hold the call until the answer's
    index moves past `index` or `wait` seconds pass. Others answer at once and
    are polled. `tag` keeps only instances carrying that tag. Every failure to
    reach the registry raises `RegistryUnavailable`.

    A source may also set `local = True` (read with getattr; default False):
    it answers from a store in this process that a watch keeps current
    (`k8s://`), so a read costs the registry nothing and the discovery's
    `min_interval` does not space its reads.
    """

    blocking: bool
    url: str

    async def fetch(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        """Read the healthy instances of `service` (async)."""
        ...

    def fetch_sync(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        """Read the healthy instances of `service` (blocking, no event loop)."""
        ...

    async def aclose(self) -> None:
        """Release async resources."""
        ...

    def close(self) -> None:
        """Release sync resources."""
        ...
