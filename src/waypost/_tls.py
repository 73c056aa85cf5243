"""How a client reaches an agent: its URL, TLS settings and token, as Consul's
tools read them from the environment.

    CONSUL_HTTP_ADDR        host:port or a URL; https:// (or CONSUL_HTTP_SSL=true) means TLS
    CONSUL_CACERT           CA bundle (PEM) to verify the agent's certificate with
    CONSUL_CAPATH           a directory of CA certificates, the same (unused when
                            there is a CA file: it takes precedence, as in Consul)
    CONSUL_CLIENT_CERT      client certificate (PEM), for agents that verify incoming
    CONSUL_CLIENT_KEY       its key
    CONSUL_HTTP_SSL_VERIFY  "false" skips verifying the agent (tests only: anyone can then
                            impersonate it)
    CONSUL_HTTP_TOKEN       ACL token
    CONSUL_HTTP_TOKEN_FILE  a file holding it; as in Consul, a token file (flag or
                            environment) wins over a token (flag or environment)

Used by the client library (discovery, `Registration`) and the CLI. A
top-level private module: any layer may import it; it imports no package.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

from ._exceptions import ConfigError

DEFAULT_AGENT = "http://127.0.0.1:8500"
_FALSE = ("0", "false", "no", "off")


def agent_url(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The agent's base URL: `explicit`, else WAYPOST_AGENT, else CONSUL_HTTP_ADDR."""
    url = explicit or environ.get("WAYPOST_AGENT") or environ.get("CONSUL_HTTP_ADDR") or ""
    url = url or DEFAULT_AGENT
    if "://" not in url:  # CONSUL_HTTP_ADDR is often host:port
        tls = environ.get("CONSUL_HTTP_SSL", "").lower() not in ("", *_FALSE)
        url = f"{'https' if tls else 'http'}://{url}"
    return url.rstrip("/")


def verify(environ: Mapping[str, str] = os.environ) -> ssl.SSLContext:
    """The TLS context for https:// agents (httpx's `verify=`): the system's CAs
    or CONSUL_CACERT / CONSUL_CAPATH, the client certificate if one is set.

    Raises:
        ConfigError: a file named there cannot be read or is not PEM.
    """
    cafile = environ.get("CONSUL_CACERT") or None
    # A CA file takes precedence over a CA path, as in Consul's rootcerts: the
    # operator who names one bundle (-ca-file) trusts it alone, not also a
    # directory left in the environment.
    capath = None if cafile else environ.get("CONSUL_CAPATH") or None
    try:
        context = ssl.create_default_context(cafile=cafile, capath=capath)
        cert, key = environ.get("CONSUL_CLIENT_CERT"), environ.get("CONSUL_CLIENT_KEY")
        if cert:
            context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS files named by CONSUL_CACERT etc.: {exc}") from exc
    if environ.get("CONSUL_HTTP_SSL_VERIFY", "").lower() in _FALSE:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def client_options(url: str, environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """httpx client arguments for an agent at `url`: `verify=` the agent's TLS
    context for https://; for http://, a context that trusts no CA at all.

    httpx's default context loads certifi's whole bundle (~75 ms, most of a
    `waypost services` run) for a client that never speaks TLS to a plain-HTTP
    agent; an empty context is nearly free, and should an https:// URL ever
    reach it, verification fails instead of trusting anyone.
    """
    if url.startswith("https://"):
        return {"verify": verify(environ)}
    return {"verify": ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)}  # CERT_REQUIRED, no CAs


def token(
    explicit: str | None = None,
    environ: Mapping[str, str] = os.environ,
    file: str | None = None,
) -> str | None:
    """The ACL token, with Consul's precedence: a token file (`file`, else
    CONSUL_HTTP_TOKEN_FILE) beats a token (`explicit`, else CONSUL_HTTP_TOKEN).

    Consul's `-token-file` is the token "instead of" `-token` / CONSUL_HTTP_TOKEN
    and its api.NewClient uses a TokenFile "even if a Token is configured": a
    shell that exports a management token must not leak it into a command
    (or a sidecar's bootstrap) that was handed a file. An empty file means
    no token, not a fall-back to CONSUL_HTTP_TOKEN.

    Raises:
        ConfigError: the token file cannot be read.
    """
    path = file or environ.get("CONSUL_HTTP_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
    return explicit or environ.get("CONSUL_HTTP_TOKEN") or None
