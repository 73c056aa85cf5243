"""The agent's security wiring: ACLs (resolver, guard, the records every agent
needs) and TLS (the HTTPS listener's settings, certificates reloaded on SIGHUP).

The runtime calls these; the parts live where they belong (`catalog/authz.py`
resolves tokens, `api/access.py` enforces routes' declarations, the DNS
server filters with the default token). See docs/security.md.
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from .. import _tlsfiles
from .._exceptions import AclDisabled, AclNotFound, ConfigError
from ..api.access import Guard
from ..catalog import Catalog, aclwrites
from ..catalog.aclidentity import Identity
from ..catalog.aclrules import READ
from ..catalog.authz import Resolver
from .config import AclTokens, AgentConfig

log = logging.getLogger("waypost.agent")


class Security:
    """ACL state for one agent: None of it when ACLs are off."""

    def __init__(self, config: AgentConfig, catalog: Catalog, node: str) -> None:
        self.config = config
        self.catalog = catalog
        self.enabled = config.acl.enabled
        self.tokens: AclTokens = config.acl.tokens.resolved() if self.enabled else AclTokens()
        self.resolver: Resolver | None = None
        self.guard: Guard | None = None
        self.identity: Identity | None = None  # who the agent's own writes are
        # The default policy in force, as X-Consul-Default-ACL-Policy names it:
        # allow with ACLs off. Intentions default to it, as Consul's do.
        self.default_policy = config.acl.default_policy if self.enabled else "allow"
        self.intentions_default_allow = self.default_policy == "allow"
        if self.enabled:
            allow = self.default_policy == "allow"
            self.resolver = Resolver(catalog.state.acl, config.datacenter, allow)
            self.guard = Guard(self.resolver, self.default_token, catalog.state, node)
            self.identity = Identity(self.resolver, self.agent_token)

    # `self.tokens` changes at run time (`set_token`): everyone reads it through
    # these two, asked at each use, never a copy taken at start-up.
    def default_token(self) -> str:
        """For requests, xDS streams and DNS lookups that carry no token."""
        return self.tokens.default

    def agent_token(self) -> tuple[str, str]:
        """(secret, where it came from): the agent token, else the default
        token, else the anonymous one; what Consul's agent uses for its own
        writes (its `AgentToken()`)."""
        if self.tokens.agent:
            return self.tokens.agent, "acl.tokens.agent"
        if self.tokens.default:
            return self.tokens.default, "acl.tokens.default (no agent token is set)"
        return "", "no token (neither acl.tokens.agent nor default is set)"

    def set_token(self, kind: str, secret: str) -> None:
        """Replace the default or the agent token (`PUT /v1/agent/token/...`)
        until restart: requests without a token, DNS and the agent's own
        writes use the new one from now on.

        Raises:
            AclDisabled: ACLs are off (Consul answers 401 here too).
        """
        if self.resolver is None:
            raise AclDisabled()
        self.tokens = msgspec.structs.replace(self.tokens, **{kind: secret})
        log.info("Updated agent's ACL token: token=%s", kind)

    async def start(self) -> None:
        """Write what ACLs need if it is not in the store yet (any agent may:
        the plan guards the ACL range, so two agents at once write it once)."""
        if not self.enabled:
            return
        management = self.tokens.initial_management
        await self.catalog.write(
            aclwrites.ensure_builtins, management, str(uuid.uuid4()), time.time()
        )
        if self.config.acl.default_policy == "deny" and not management:
            log.warning(
                "ACLs deny by default and no initial management token is set: "
                "bootstrap with PUT /v1/acl/bootstrap"
            )

    def dns_allow(self) -> Callable[[str, str], bool] | None:
        """What DNS may answer: what the agent's default token may read."""
        resolver = self.resolver
        if resolver is None:
            return None

        def allow(resource: str, name: str) -> bool:
            try:  # the default token as it is now (PUT /v1/agent/token/default)
                return resolver.resolve(self.default_token()).allowed(resource, name, READ)
            except AclNotFound:  # a default token that does not exist reads nothing
                return False

        return allow


class HttpsTls:
    """The HTTPS listener's TLS: the checked bytes of the files (`_tlsfiles`),
    loaded into the context uvicorn serves with, and the last pair that
    loaded, put back if a reload fails half-way (OpenSSL installs the new
    certificate before it reads the key)."""

    KEPT = "the HTTPS listener kept the old certificate"

    def __init__(self, config: AgentConfig) -> None:
        """Raises ConfigError: a certificate, key or CA file does not load
        (naming it and why), at start-up rather than at the first handshake."""
        self.config = config
        try:
            self.files = _tlsfiles.load(
                config.tls_cert_file, config.tls_key_file, config.tls_ca_file
            )
        except ConfigError as exc:
            raise ConfigError(f"--https: {exc}") from exc
        self.context: ssl.SSLContext | None = None

    def options(self) -> dict[str, Any]:
        """uvicorn's settings: our context, built from the checked bytes."""
        return {"ssl_context_factory": self._context_factory}

    def _context_factory(self, uvicorn_config: Any, _default: Any) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # what uvicorn's own factory makes
        _tlsfiles.install(context, self.files)
        if self.config.tls_verify_incoming:
            context.verify_mode = ssl.CERT_REQUIRED
        if uvicorn_config.ssl_ciphers:
            context.set_ciphers(uvicorn_config.ssl_ciphers)
        self.context = context
        return context

    def use(self, files: _tlsfiles.TlsFiles) -> None:
        """Serve `files` (checked by `_tlsfiles.load`) in the live context
        (SIGHUP): new handshakes get the new certificate, open connections
        keep theirs.

        Raises:
            ConfigError: they do not install; the listener keeps the old pair.
        """
        if self.context is None:
            return
        try:
            _tlsfiles.install(self.context, files)
        except ConfigError as exc:  # it may hold the new certificate without a key now
            _tlsfiles.install(self.context, self.files)  # checked and served before: loads
            raise ConfigError(f"{self.KEPT}: {exc}") from exc
        self.files = files
        log.info("SIGHUP: reloaded the HTTPS certificate %s", self.config.tls_cert_file)
