"""How the CLI talks to a running agent, as Consul's CLI does.

The agent's address comes from `--http-addr`, else `CONSUL_HTTP_ADDR`, else
127.0.0.1:8500, with or without a scheme (`127.0.0.1:8500` means http://);
the token from `--token-file`, else `CONSUL_HTTP_TOKEN_FILE`, else `--token`,
else `CONSUL_HTTP_TOKEN` (a file wins over a token, as in Consul), sent as
`X-Consul-Token`; an https:// agent (or `CONSUL_HTTP_SSL=true`) is
verified with `CONSUL_CACERT` and shown `CONSUL_CLIENT_CERT` (waypost/_tls.py).
Names in paths are percent-encoded (a service named `q?x` is asked for as
`q%3Fx`). An answer that is not an agent's (a web server's HTML page, a proxy's
error) is explained, not dumped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import _tls
from .._exceptions import ConfigError, WaypostError

# httpx (~60 ms to import) is loaded by the methods that send requests, not with
# the module: `waypost agent` and `--help` import this module for its defaults.
if TYPE_CHECKING:
    import httpx

DEFAULT_ADDR = "127.0.0.1:8500"
ADDR_ENV = "CONSUL_HTTP_ADDR"
TOKEN_ENV = "CONSUL_HTTP_TOKEN"


class AgentError(WaypostError):
    """The agent could not be reached, refused the request, or is not an agent."""


def agent_url(flag: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The agent's base URL from the flag, the environment or the default."""
    value = (flag or environ.get(ADDR_ENV) or DEFAULT_ADDR).strip().rstrip("/")
    if "://" not in value:
        value = _tls.agent_url(value, environ)
    scheme = value.split("://", 1)[0]
    if scheme not in ("http", "https"):
        raise ConfigError(f"--http-addr {value!r}: expected http://HOST:PORT or HOST:PORT")
    return value


def segment(name: str) -> str:
    """One path segment, percent-encoded: `q?x` -> `q%3Fx`, `pct%41` -> `pct%2541`."""
    return quote(name, safe="")


class AgentClient:
    """The agent's HTTP API, reached as Consul's CLI does.

    Args:
        addr: `--http-addr` (None: the environment's, else the default).
        token: `--token` (None: the environment's).
        token_file: `--token-file`; a file (this or the environment's) wins over `token`.
        timeout: Seconds a request may take.
        environ: Where the `CONSUL_HTTP_*` / `CONSUL_CACERT` settings are read
            (a command's flags such as `-ca-file` override them in a copy).
    """

    def __init__(
        self,
        addr: str | None = None,
        token: str | None = None,
        timeout: float = 10,
        environ: Mapping[str, str] = os.environ,
        token_file: str | None = None,
    ) -> None:
        self.base = agent_url(addr, environ)
        self.token = _tls.token(token, environ, token_file) or ""
        headers = {"X-Consul-Token": self.token} if self.token else {}
        options: Any = _tls.client_options(self.base, environ)
        import httpx

        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout, **options)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)[0]

    def get_indexed(
        self, path: str, timeout: float | None = None, **params: Any
    ) -> tuple[Any, int]:
        """A blocking read: the body and its X-Consul-Index."""
        body, response = self.request("GET", path, params=params, timeout=timeout)
        return body, int(response.headers.get("x-consul-index", "0") or 0)

    def put(self, path: str, body: Any = None, **params: Any) -> None:
        self.request("PUT", path, params=params, json=body)

    def request(self, method: str, path: str, **kw: Any) -> tuple[Any, httpx.Response]:
        """Raises AgentError, saying what went wrong in words an operator can act on."""
        import httpx

        kw = {k: v for k, v in kw.items() if not (k == "timeout" and v is None)}
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise AgentError(f"cannot reach the agent at {self.base}: {_reason(exc)}") from exc
        if response.status_code >= 400:
            raise AgentError(self._refusal(method, path, response))
        if method != "GET":
            return None, response
        if not _is_json(response):
            raise AgentError(self._not_an_agent(path, response))
        try:
            return response.json(), response
        except ValueError as exc:
            raise AgentError(self._not_an_agent(path, response)) from exc

    def _refusal(self, method: str, path: str, response: httpx.Response) -> str:
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/plain") and (response.status_code == 404 or "html" in kind):
            return self._not_an_agent(path, response)
        text = response.text.strip() or response.reason_phrase
        return f"the agent at {self.base} refused {method} {path}: {response.status_code} {text}"

    def _not_an_agent(self, path: str, response: httpx.Response) -> str:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return (
            f"{self.base} does not answer like a waypost or Consul agent: GET {path} gave "
            f"{response.status_code} with {kind}. Is --http-addr (or {ADDR_ENV}) the agent's "
            "HTTP API address?"
        )


def _is_json(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith("application/json")


def _reason(exc: httpx.HTTPError) -> str:
    import httpx

    if "SSL" in str(exc) or "CERTIFICATE" in str(exc):  # httpx reports TLS failures as ConnectError
        return (
            f"TLS: {exc} (CONSUL_CACERT names the CA that signed the agent's certificate; "
            "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY a client certificate)"
        )
    if isinstance(exc, httpx.ConnectError):
        return "connection refused (is the agent running? start one with `waypost agent`)"
    if isinstance(exc, httpx.TimeoutException):
        return "it did not answer in time"
    return str(exc) or type(exc).__name__
