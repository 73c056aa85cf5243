"""A fixed instance list: `static://10.0.0.5:3000,10.0.0.6:3000`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from .._instance import Instance
from ._base import Answer


def parse_hostport(text: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port`.

    Raises:
        ValueError: No port, or not a number.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


class StaticSource:
    """The same instances for every service name, or a per-service mapping.

    Args:
        instances: Either `host:port` strings for every service, or a mapping
            from service name to such strings.
    """

    blocking = False

    def __init__(self, instances: Sequence[str] | Mapping[str, Sequence[str]]) -> None:
        self.url = "static://"
        if isinstance(instances, Mapping):
            self._by_service = {k: list(v) for k, v in instances.items()}
            self._default: list[str] | None = None
        else:
            self._by_service = {}
            self._default = list(instances)

    @classmethod
    def from_url(cls, url: str) -> StaticSource:
        """Parse `static://h:p,h:p`."""
        netloc = urlsplit(url).netloc or url.partition("://")[2]
        source = cls([part for part in netloc.split(",") if part])
        source.url = url
        return source

    def _answer(self, service: str) -> Answer:
        addrs = self._by_service.get(service, self._default or [])
        found = []
        for text in addrs:
            host, port = parse_hostport(text)
            found.append(Instance(f"{service}-{host}-{port}", host, port, service=service))
        return Answer(0, tuple(found))

    async def fetch(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        return Answer(0, ()) if tag else self._answer(service)

    def fetch_sync(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        return Answer(0, ()) if tag else self._answer(service)

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        return None
