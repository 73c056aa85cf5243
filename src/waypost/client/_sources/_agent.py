"""The agent source: Consul's HTTP API, `GET /v1/health/service/<name>?passing`.

Works against `waypost agent` and against a real Consul. Blocking queries:
the caller passes the last `X-Consul-Index` it saw and a `wait`; the agent holds
the request until the service's index moves or the wait (plus up to wait/16 of
jitter) runs out. The HTTP read timeout is therefore `wait * 17/16 + 5 s`: a
timeout shorter than wait + jitter would turn every quiet period into an error.
The index rules (reset when it goes backwards, never below 1) live in the
watcher (`_discovery.py`); this module only does one request.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from ... import _tls
from ..._exceptions import RegistryUnavailable
from .._instance import Instance
from ._base import Answer


class _Weights(msgspec.Struct):
    Passing: int = 1


class _Service(msgspec.Struct):
    ID: str = ""
    Service: str = ""
    Tags: list[str] | None = None
    Address: str = ""
    Meta: dict[str, str] | None = None
    Port: int = 0
    Weights: _Weights | None = None


class _Node(msgspec.Struct):
    Node: str = ""
    Address: str = ""


class _Entry(msgspec.Struct):
    Node: _Node
    Service: _Service


_decoder = msgspec.json.Decoder(list[_Entry])


def parse_health(service: str, body: bytes) -> tuple[Instance, ...]:
    """Turn a `/v1/health/service` body into instances.

    Raises:
        RegistryUnavailable: The body is not the expected JSON.
    """
    try:
        entries = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise RegistryUnavailable(
            f"registry answered service {service!r} with malformed JSON: {exc}", service=service
        ) from exc
    return tuple(_to_instance(service, e) for e in entries)


def _to_instance(service: str, entry: _Entry) -> Instance:
    svc = entry.Service
    return Instance(
        id=svc.ID or f"{service}-{entry.Node.Node}-{svc.Port}",
        address=svc.Address or entry.Node.Address,
        port=svc.Port,
        tags=tuple(svc.Tags or ()),
        meta=dict(svc.Meta or {}),
        weight=max(1, svc.Weights.Passing) if svc.Weights else 1,
        service=svc.Service or service,
    )


class AgentSource:
    """Reads instances from a Consul-compatible HTTP API.

    Args:
        url: Base URL of the agent, e.g. `http://127.0.0.1:8500`; an https://
            agent is verified with `$CONSUL_CACERT` (else the system's CAs), and
            `$CONSUL_CLIENT_CERT`/`$CONSUL_CLIENT_KEY` are presented if set.
        token: ACL token sent as `X-Consul-Token`; default `$CONSUL_HTTP_TOKEN`.
        connect_timeout: Seconds to wait for a connection.
    """

    blocking = True

    def __init__(self, url: str, *, token: str | None = None, connect_timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        secret = _tls.token(token)
        self._headers = {"X-Consul-Token": secret} if secret else {}
        self._http_options = _tls.client_options(self.url)
        self._connect_timeout = connect_timeout
        self._async: httpx.AsyncClient | None = None
        self._sync: httpx.Client | None = None

    @classmethod
    def from_url(cls, url: str) -> AgentSource:
        return cls(url)

    def _request_args(
        self, service: str, index: int, wait: float, tag: str | None
    ) -> dict[str, Any]:
        params: dict[str, str] = {"passing": "1"}
        if tag:
            params["tag"] = tag
        if index > 0:
            params["index"] = str(index)
            params["wait"] = f"{max(1, int(wait))}s"
        read = max(1.0, wait) * 17 / 16 + 5.0
        return {
            "url": f"{self.url}/v1/health/service/{quote(service, safe='')}",
            "params": params,
            "headers": self._headers,
            "timeout": httpx.Timeout(read, connect=self._connect_timeout),
        }

    async def fetch(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        if self._async is None:
            self._async = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=None),
                **self._http_options,  # type: ignore[arg-type]
            )
        try:
            response = await self._async.get(**self._request_args(service, index, wait, tag))
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, service, exc) from exc
        return _answer(self.url, service, response)

    def fetch_sync(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        if self._sync is None:
            self._sync = httpx.Client(**self._http_options)  # type: ignore[arg-type]
        try:
            response = self._sync.get(**self._request_args(service, index, wait, tag))
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, service, exc) from exc
        return _answer(self.url, service, response)

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None


def _unreachable(url: str, service: str, exc: Exception) -> RegistryUnavailable:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return RegistryUnavailable(
        f"cannot reach the registry at {url} for service {service!r} ({reason})", service=service
    )


def _answer(url: str, service: str, response: httpx.Response) -> Answer:
    if response.status_code != 200:
        raise RegistryUnavailable(
            f"registry at {url} answered {response.status_code} for service {service!r}: "
            f"{response.text[:200]}",
            service=service,
        )
    raw_index = response.headers.get("X-Consul-Index")
    if raw_index is None or not raw_index.isdigit():
        raise RegistryUnavailable(
            f"{url} sent no X-Consul-Index header: not a Consul-compatible registry",
            service=service,
        )
    return Answer(max(1, int(raw_index)), parse_health(service, response.content))
