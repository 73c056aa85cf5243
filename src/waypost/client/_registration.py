"""Self-registration: be findable while running, vanish cleanly when stopping.

    async with Registration("payment", port=3000, check=HttpCheck("/health")):
        ...  # registered here (also usable with a plain `with`)

Lifecycle:
- enter: `PUT /v1/agent/service/register` (Consul JSON, PascalCase keys), with
  the check under `Check` and its ID fixed to `service:<id>`, as Consul names it;
- while inside, a maintainer loop keeps the registration alive: for a TTL check
  it heartbeats every ttl/3 (`PUT /v1/agent/check/pass/service:<id>`); for
  other checks it reads `GET /v1/agent/service/<id>` every `sync_interval`.
  A 404 on either means the agent forgot us (restart without state,
  deregistered by an operator, reaped): register again. An unreachable agent
  is logged and retried at the next tick;
- exit: `PUT /v1/agent/service/deregister/<id>` (idempotent);
- SIGTERM / SIGINT: a signal handler deregisters synchronously (short timeout)
  before handing the signal to whatever handled it before (so the process still
  stops the way it would have). Installed only from the main thread.

The async form runs its maintainer as an asyncio task on the caller's loop. The
sync form (`with`) runs it in one daemon thread, since it has no loop to use.

ID: `<name>-<hostname>-<port>`, stable across restarts so a restarted process
replaces its old entry instead of adding a twin. Address: when not given, the
local address of the route to the agent (a UDP "connect" sends no packet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from .. import _tls
from .._exceptions import RegistrationError
from ._checks import Check, TtlCheck

log = logging.getLogger("waypost.client")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def default_agent(agent: str | None) -> str:
    """The agent URL: the argument, else the environment (WAYPOST_AGENT,
    CONSUL_HTTP_ADDR with CONSUL_HTTP_SSL), else the local default."""
    return _tls.agent_url(agent)


def detect_address(agent: str) -> str:
    """The local IP address used to reach the agent."""
    parts = urlsplit(agent)
    host, port = parts.hostname or "127.0.0.1", parts.port or 8500
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            address: str = sock.getsockname()[0]
            return address
    except OSError:
        return "127.0.0.1"


class Registration:
    """Registers a service instance with the agent while in a `with` block.

    Args:
        name: Service name.
        port: Port the instance listens on.
        check: `HttpCheck`, `TcpCheck`, `TtlCheck` or None.
        agent: Agent HTTP address; default `$WAYPOST_AGENT`, else
            `$CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500`.
        address: Address to advertise; detected when None.
        id: Instance ID; default `<name>-<hostname>-<port>`.
        tags: Registry tags.
        meta: Registry metadata (e.g. `{"zone": "a"}`).
        weight: Passing weight for weighted balancing.
        token: ACL token; default `$CONSUL_HTTP_TOKEN`. `$CONSUL_HTTP_TOKEN_FILE`,
            if set, wins over both (Consul's api.NewClient does the same).
            An https:// agent is verified with `$CONSUL_CACERT` (or the system's
            CAs), and `$CONSUL_CLIENT_CERT`/`$CONSUL_CLIENT_KEY` are presented.
        handle_signals: Deregister on SIGTERM/SIGINT before the process ends.
        sync_interval: Seconds between registration checks for non-TTL checks.
        timeout: Seconds for each call to the agent.
    """

    def __init__(
        self,
        name: str,
        *,
        port: int,
        check: Check | None = None,
        agent: str | None = None,
        address: str | None = None,
        id: str | None = None,
        tags: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
        weight: int = 1,
        token: str | None = None,
        handle_signals: bool = True,
        sync_interval: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.port = port
        self.check = check
        self.agent = default_agent(agent)
        self.address = address or detect_address(self.agent)
        self.id = id or f"{name}-{socket.gethostname()}-{port}"
        self.tags = list(tags)
        self.meta = dict(meta or {})
        self.weight = weight
        self.handle_signals = handle_signals
        self.sync_interval = sync_interval
        self.timeout = timeout
        secret = _tls.token(token)
        self.headers = {"X-Consul-Token": secret} if secret else {}
        self._http_options = _tls.client_options(self.agent)
        self.registrations = 0
        self.heartbeats = 0
        self._registered = False
        self._previous: dict[int, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def check_id(self) -> str:
        """The ID of the service's check (`service:<id>`)."""
        return f"service:{self.id}"

    def payload(self) -> dict[str, Any]:
        """The body of `PUT /v1/agent/service/register`."""
        body: dict[str, Any] = {
            "ID": self.id,
            "Name": self.name,
            "Address": self.address,
            "Port": self.port,
            "Tags": self.tags,
            "Meta": self.meta,
            "Weights": {"Passing": self.weight, "Warning": 1},
        }
        if self.check is not None:
            check = self.check.definition(self.address, self.port)
            body["Check"] = {"CheckID": self.check_id, "Name": f"{self.name} health", **check}
        return body

    # -- async -----------------------------------------------------------------

    async def __aenter__(self) -> Registration:
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            headers=self.headers,
            **self._http_options,  # type: ignore[arg-type]
        )
        try:
            await self.register()
        except BaseException:
            await self._client.aclose()
            raise
        self._install_signals()
        self._task = asyncio.create_task(self._maintain(), name=f"waypost-registration-{self.id}")
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore_signals()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.deregister()
        finally:
            await self._client.aclose()

    async def register(self) -> None:
        """Register (or re-register) the service and its check.

        Raises:
            RegistrationError: The agent is unreachable or refused.
        """
        url = f"{self.agent}/v1/agent/service/register"
        try:
            response = await self._client.put(url, json=self.payload())
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        self._registered_or_raise(response)

    async def deregister(self) -> None:
        """Remove the service from the agent (no-op if not registered)."""
        if not self._registered:
            return
        self._registered = False
        try:
            await self._client.put(f"{self.agent}/v1/agent/service/deregister/{self.id}")
        except httpx.HTTPError as exc:
            log.warning("could not deregister %s from %s: %s", self.id, self.agent, exc)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self._tick())
            try:
                if await self._lost():
                    log.warning("agent %s lost service %s; registering again", self.agent, self.id)
                    await self.register()
            except (httpx.HTTPError, RegistrationError) as exc:
                log.warning("keeping %s registered failed: %s", self.id, exc)

    async def _lost(self) -> bool:
        if isinstance(self.check, TtlCheck):
            url = f"{self.agent}/v1/agent/check/pass/{self.check_id}"
            response = await self._client.put(url)
            self.heartbeats += 1
        else:
            response = await self._client.get(f"{self.agent}/v1/agent/service/{self.id}")
        return _forgotten(response)

    # -- sync ------------------------------------------------------------------

    def __enter__(self) -> Registration:
        self._sync_client = httpx.Client(
            timeout=self.timeout,
            headers=self.headers,
            **self._http_options,  # type: ignore[arg-type]
        )
        try:
            self.register_sync()
        except BaseException:
            self._sync_client.close()
            raise
        self._install_signals()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._maintain_sync, name=f"waypost-registration-{self.id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore_signals()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 1)
        try:
            self.deregister_sync()
        finally:
            self._sync_client.close()

    def register_sync(self) -> None:
        """Blocking `register()`.

        Raises:
            RegistrationError: The agent is unreachable or refused.
        """
        url = f"{self.agent}/v1/agent/service/register"
        try:
            response = self._sync_client.put(url, json=self.payload())
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        self._registered_or_raise(response)

    def deregister_sync(self) -> None:
        """Blocking `deregister()`."""
        if not self._registered:
            return
        self._registered = False
        try:
            httpx.put(
                f"{self.agent}/v1/agent/service/deregister/{self.id}",
                headers=self.headers,
                timeout=min(self.timeout, 2.0),
                **self._http_options,  # type: ignore[arg-type]
            )
        except httpx.HTTPError as exc:
            log.warning("could not deregister %s from %s: %s", self.id, self.agent, exc)

    def _maintain_sync(self) -> None:
        while not self._stop.wait(self._tick()):
            try:
                if self._lost_sync():
                    log.warning("agent %s lost service %s; registering again", self.agent, self.id)
                    self.register_sync()
            except (httpx.HTTPError, RegistrationError) as exc:
                log.warning("keeping %s registered failed: %s", self.id, exc)

    def _lost_sync(self) -> bool:
        if isinstance(self.check, TtlCheck):
            response = self._sync_client.put(f"{self.agent}/v1/agent/check/pass/{self.check_id}")
            self.heartbeats += 1
        else:
            response = self._sync_client.get(f"{self.agent}/v1/agent/service/{self.id}")
        return _forgotten(response)

    # -- shared ----------------------------------------------------------------

    def _tick(self) -> float:
        if isinstance(self.check, TtlCheck):
            return self.check.heartbeat_every
        return self.sync_interval

    def _registered_or_raise(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise RegistrationError(
                f"agent {self.agent} refused to register {self.id!r}: "
                f"{response.status_code} {response.text[:300]}",
                service=self.name,
            )
        self._registered = True
        self.registrations += 1

    def _unreachable(self, exc: Exception) -> RegistrationError:
        return RegistrationError(
            f"cannot reach agent {self.agent} to register {self.id!r} ({type(exc).__name__}: "
            f"{exc}); is `waypost agent` running there?",
            service=self.name,
        )

    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: deregistering %s", signum, self.id)
        self.deregister_sync()
        previous = self._previous.get(signum, signal.SIG_DFL)
        self._restore_signals()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _forgotten(response: httpx.Response) -> bool:
    if response.status_code == 404:
        return True
    if response.status_code >= 500:
        text = response.text.lower()
        return "not found" in text or "unknown" in text or "does not have" in text
    return False
