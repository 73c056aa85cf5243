"""The rest of `/v1/agent/...` that clients call, and the endpoints not built yet.

`/v1/agent/metrics` answers in Consul's JSON shape (gauges from every
component's statistics; `?format=prometheus` gives the Prometheus text of
`/metrics`), `/v1/agent/monitor` streams the agent's log lines, `/leave`
shuts the agent down, `/reload` reloads the TLS certificates (500 with the
reason if one did not load, as Consul answers a failed reload). The
endpoints waypost does not build answer 501 with a message naming what is
missing, rather than the router's "no endpoint" 404, so a client's error
says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import msgspec

from .._exceptions import ConfigError, NotFoundError, ValidationError
from .._logfmt import ConsulFormatter
from ..catalog.aclrules import READ, WRITE
from . import access, decode
from .http import HttpError, Request, Response, Router, Streaming, empty, json
from .metrics import Metrics
from .ports import AgentInfo

# `PUT /v1/agent/token/<kind>`: the kinds waypost uses (Consul's names and
# their legacy spellings), and those Consul has that waypost has no use for.
TOKEN_KINDS: Final = {"default": "default", "acl_token": "default", "agent": "agent",
                      "acl_agent_token": "agent"}  # fmt: skip
TOKENS_NOT_BUILT: Final = frozenset(
    {"agent_recovery", "agent_master", "acl_agent_master_token", "replication",
     "acl_replication_token", "config_file_service_registration", "dns", "dns_token"}
)  # fmt: skip
MONITOR_BACKLOG: Final = 1000  # lines a slow monitor client may fall behind before they drop
LEVELS: Final = {"trace": 5, "debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}

NOT_BUILT: Final = {
    "/v1/operator/": "the operator endpoints (Raft, autopilot, keyring)",
    "/v1/snapshot": "snapshots",
    "/v1/peering/": "cluster peering",
    "/v1/peerings": "cluster peering",
    "/v1/config/": "config entries",
    "/v1/config": "config entries",
    "/v1/query": "prepared queries",
    "/v1/query/": "prepared queries",
    "/v1/agent/join/": "gossip join (agents of a cluster share an etcd store instead)",
    "/v1/agent/force-leave/": "gossip force-leave",
    "/v1/connect/": "service mesh (Connect)",
    "/v1/coordinate/": "network coordinates",
}


_NOBODY = logging.CRITICAL + 1  # the handler's level while no monitor listens


class LogStream(logging.Handler):
    """Fans the agent's log records out to `/v1/agent/monitor` clients."""

    def __init__(self) -> None:
        # Above every level while nobody listens: the logger then skips this
        # handler (and its lock) without calling it, on every line it logs.
        super().__init__(level=_NOBODY)
        self.setFormatter(ConsulFormatter())  # the layout of the agent's own log
        self._queues: dict[asyncio.Queue[bytes], int] = {}  # queue -> its lowest level
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not self._queues:
            return
        line = (self.format(record) + "\n").encode()
        for queue, level in list(self._queues.items()):
            if record.levelno >= level:
                try:
                    queue.put_nowait(line)
                except asyncio.QueueFull:
                    self.dropped += 1

    @contextlib.contextmanager
    def subscribe(self, level: int) -> Iterator[asyncio.Queue[bytes]]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(MONITOR_BACKLOG)
        self._queues[queue] = level
        self.setLevel(min(self._queues.values()))
        try:
            yield queue
        finally:
            self._queues.pop(queue, None)
            self.setLevel(min(self._queues.values(), default=_NOBODY))


class AgentToken(msgspec.Struct):
    token: str = ""  # `{"Token": "..."}`, as Consul's api.AgentToken


class AgentEndpoints:
    def __init__(self, info: AgentInfo, metrics: Metrics, logs: LogStream) -> None:
        self.info = info
        self.metrics = metrics
        self.logs = logs

    def routes(self, r: Router) -> None:
        # PUT only for writes, as Consul's; ACLs as Consul's: agent:<level> on this node.
        r.add("PUT", "/v1/agent/reload", self.reload, access.agent(WRITE))
        r.add("PUT", "/v1/agent/leave", self.leave, access.agent(WRITE))
        r.add("PUT", "/v1/agent/token/", self.set_token, access.agent(WRITE))
        r.add("GET HEAD", "/v1/agent/metrics", self.agent_metrics, access.agent(READ))
        r.add("GET", "/v1/agent/monitor", self.monitor, access.agent(READ))
        for path in NOT_BUILT:
            r.add("GET HEAD PUT POST DELETE", path, self.not_built)

    async def reload(self, req: Request, _: str) -> Response:
        try:
            await self.info.reload()
        except ConfigError as exc:  # a certificate kept: Consul answers 500 with the reason
            raise HttpError(500, str(exc)) from exc
        return empty()

    async def leave(self, req: Request, _: str) -> Response:
        await self.info.leave()
        return empty()

    async def set_token(self, req: Request, kind: str) -> Response:
        """Set one of the agent's ACL tokens until it restarts (Consul's
        `consul acl set-agent-token`; without `enable_token_persistence` it
        does not keep them either). The agent token is checked at once (the
        anti-entropy pass is run) and applies to reaping from now on."""
        if kind in TOKENS_NOT_BUILT:
            raise HttpError(501, f'waypost has no use for the "{kind}" token yet')
        target = TOKEN_KINDS.get(kind)
        if target is None:
            raise NotFoundError(f'Token "{kind}" is unknown')
        body = decode.decode(await req.body(), AgentToken)
        await self.info.set_acl_token(target, body.token)
        return empty()

    async def agent_metrics(self, req: Request, rest: str) -> Response:
        if req.arg("format") == "prometheus":
            return await self.metrics.handle(req, rest)
        gauges = [
            {"Name": f"waypost.{component}.{name}", "Value": float(value), "Labels": {}}
            for component, stats in sorted(self.metrics.statistics().items())
            for name, value in sorted(stats.items())
        ]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime())
        return json(
            {"Timestamp": stamp, "Gauges": gauges, "Points": [], "Counters": [], "Samples": []}
        )

    async def monitor(self, req: Request, _: str) -> Response:
        name = (req.arg("loglevel") or "info").lower()
        if name not in LEVELS:
            raise ValidationError(
                f'Unknown log level "{name}": use trace, debug, info, warn or error'
            )
        return Streaming(self._lines(req, LEVELS[name]), [(b"content-type", b"text/plain")])

    async def _lines(self, req: Request, level: int) -> AsyncIterator[bytes]:
        """Log lines until the client goes away (or the agent stops)."""
        lost = req.connection_lost
        with self.logs.subscribe(level) as queue:
            yield b""  # the headers go out at once, before the first line
            while lost is None or not lost.done():
                getter: asyncio.Future[bytes] = asyncio.ensure_future(queue.get())
                waiting: set[asyncio.Future[Any]] = {getter} if lost is None else {getter, lost}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return
                yield getter.result()

    async def not_built(self, req: Request, _: str) -> Response:
        what = next(v for k, v in NOT_BUILT.items() if req.path.startswith(k))
        raise HttpError(
            501,
            f"waypost does not implement {what} yet ({req.path}); "
            "docs/http-api.md lists what is built",
        )
