"""gRPC channels to etcd members, auth tokens, and the one retry loop.

One channel per configured endpoint, opened lazily; every call goes to the
"current" endpoint and a transport failure moves the current pointer to the
next one, so a dead member costs one failed attempt, not every later call.
`request()` is for reads (and lease grants): it retries transient failures
(member gone, no leader, leader changed) until the caller's deadline, but
gives up at once when every endpoint refused the connection: with nothing
listening there is nothing to wait for, and the caller wants a fast, clear
StoreUnavailable.

`write()` is for Txns that the caller has made idempotent (_etcd_txn.py: the slot
nonce). It retries the same way, but keeps track of whether any attempt may
have reached etcd: a connection refused, "no leader" (the member checked
before proposing, because writes send `hasleader`) and "too many requests"
(RESOURCE_EXHAUSTED: the member's apply lags, and it refuses before
proposing) are answers from before the request was proposed, retried with
backoff without counting as sent; a timeout, a cancelled
call, a connection lost mid-call, "request timed out" or "leader changed" are
not. When the deadline passes it raises OutcomeUnknown if some attempt may
have been applied, StoreUnavailable if none can have been.

The protobuf stubs come from aetcd (generated for etcd's v3 API, current
with protobuf); aetcd's own Client is not used because it speaks to one
endpoint only, without TLS and without per-call deadlines.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from .._exceptions import OutcomeUnknown, StorageError, StoreUnavailable
from ._etcd_config import EtcdConfig

log = logging.getLogger("waypost.storage.etcd")

T = TypeVar("T")

TRANSIENT: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
ATTEMPT_TIMEOUT: Final = 2.0  # one try; request() keeps trying until its deadline
_CHANNEL_OPTIONS: Final = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
)
_REFUSED_HINTS: Final = ("connection refused", "failed to connect", "connect failed")
#: etcd's own UNAVAILABLE answers that come before the request is proposed to raft
_UNPROPOSED_HINTS: Final = ("etcdserver: no leader",)
#: etcd's "too many requests" (rpctypes.ErrGRPCRequestTooManyRequests, code
#: RESOURCE_EXHAUSTED): the member's applied index lags its committed one, and
#: it refuses before proposing; retried with backoff like the other refusals
#: from before the proposal, on the same member (it is busy, not gone)
_BUSY_HINT: Final = "etcdserver: too many requests"
#: gRPC's own size refusal (RESOURCE_EXHAUSTED), of the message's bytes
_SIZE_HINT: Final = "larger than max"
_TLS_HINTS: Final = ("handshake failed", "ssl_error", "tsi_", "certificate_verify")
_CONNECT_PREFIX: Final = "failed to connect to all addresses; last error: "


class _Failure(enum.Enum):
    """How a failed gRPC attempt is taken (Session._sort)."""

    TOKEN = "etcd refused the token: authenticate again, then retry"
    LEASE = "a put named a lease etcd no longer has"
    BUSY = "too many requests: refused before it was proposed, retried"
    REFUSED = "etcd refused the request itself: not retried"
    MEMBER_DOWN = "the member cannot be reached: the next one is tried"
    UNPROPOSED = "the member answered before proposing it (no leader): retried"
    MAYBE_APPLIED = "no answer: the request may have been applied"


class LeaseNotFound(Exception):
    """etcd no longer knows the lease a put named (it expired).

    `maybe_applied`: an earlier attempt of the same write got no answer, so it
    may have been applied while the lease still existed.
    """

    def __init__(self, details: str, maybe_applied: bool = False) -> None:
        super().__init__(details)
        self.maybe_applied = maybe_applied


class Endpoint:
    """One etcd member: its channel and the stubs bound to it."""

    def __init__(self, index: int, address: str, channel: grpc.aio.Channel) -> None:
        self.index = index
        self.address = address
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)
        self.auth = rpc.AuthStub(channel)


Call = Callable[[Endpoint, float], Awaitable[T]]


class Session:
    """Channels to the etcd members of one store URL, shared by every task of the backend."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._endpoints: list[Endpoint | None] = [None] * len(config.endpoints)
        self._current = 0
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self.last_contact = time.monotonic()
        self.retries = 0
        self.on_failed: list[Callable[[Endpoint], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop of the first call, kept: `asyncio.get_running_loop()` is a
        getpid() system call on Python 3.11, and every Txn asks (the channels
        are bound to that loop anyway)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # -- endpoints ---------------------------------------------------------

    def current(self) -> Endpoint:
        """The endpoint calls go to now (its channel is opened on first use)."""
        endpoint = self._endpoints[self._current]
        if endpoint is None:
            endpoint = Endpoint(self._current, self.config.endpoints[self._current], self._open())
            self._endpoints[self._current] = endpoint
        return endpoint

    def failed(self, endpoint: Endpoint) -> None:
        """`endpoint` did not answer: later calls try the next member, and the
        `on_failed` listeners hear of it (a stream on that member may hang)."""
        if endpoint.index == self._current:
            self._current = (self._current + 1) % len(self._endpoints)
        for listener in self.on_failed:
            listener(endpoint)

    def contact(self) -> None:
        """Record that etcd answered (for StoreHealth.last_contact_ms)."""
        self.last_contact = time.monotonic()

    def metadata(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        token = (("token", self._token),) if self._token else ()
        return token + extra

    def _open(self) -> grpc.aio.Channel:
        target = self.config.endpoints[self._current]
        if not self.config.tls:
            return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.config.ca,
            private_key=self.config.key,
            certificate_chain=self.config.cert,
        )
        return grpc.aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)

    async def close(self) -> None:
        channels = [e.channel for e in self._endpoints if e is not None]
        self._endpoints = [None] * len(self._endpoints)
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)

    # -- calls -------------------------------------------------------------

    def unary(self, stub: str, method: str, request: Any) -> Call[Any]:
        """A `request()` call of `<stub>.<method>(request)` with the current token."""

        def call(endpoint: Endpoint, timeout: float) -> Awaitable[Any]:
            bound = getattr(getattr(endpoint, stub), method)
            result: Awaitable[Any] = bound(request, timeout=timeout, metadata=self.metadata())
            return result

        return call

    async def request(self, what: str, call: Call[T], deadline: float) -> T:
        """Run `call(endpoint, timeout)` until it succeeds or `deadline` (loop time) passes.

        Raises:
            StoreUnavailable: no member answered in time, or every member refused.
            StorageError: etcd answered with an error that retrying cannot fix.
            LeaseNotFound: a put named a lease etcd no longer has.
        """
        loop = self.loop
        refused: set[int] = set()
        delay = 0.05
        while True:
            endpoint = self.current()
            remaining = deadline - loop.time()
            try:
                if self.config.user and self._token is None:
                    await self.authenticate(endpoint)
                result = await call(endpoint, max(0.05, min(remaining, ATTEMPT_TIMEOUT)))
            except grpc.aio.AioRpcError as exc:
                await self._handle(what, endpoint, exc, refused)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self.unavailable(what, exc) from exc
                self.retries += 1
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)
                continue
            self.contact()
            return result

    async def write(self, what: str, call: Call[T], deadline: float) -> T:
        """Send an idempotent write until etcd answers it or `deadline` passes.

        The caller guarantees that sending the request again after an attempt
        that may have been applied changes nothing (_etcd_txn.py's slot nonce);
        this method only decides which error the caller gets.

        Raises:
            OutcomeUnknown: the deadline passed and some attempt may have been applied.
            StoreUnavailable: no attempt can have been applied (refused, no leader).
            StorageError: etcd refused the request; nothing of it was applied.
            LeaseNotFound: a put named a lease etcd no longer has.
        """
        loop = self.loop
        refused: set[int] = set()
        delay = 0.05
        maybe_sent = False
        last: grpc.aio.AioRpcError | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._lost(what, last, maybe_sent)
            endpoint = self.current()
            try:
                if self.config.user and self._token is None:
                    await self.authenticate(endpoint)
                result = await call(endpoint, max(0.01, min(remaining, ATTEMPT_TIMEOUT)))
            except grpc.aio.AioRpcError as exc:
                last = exc
                failure = self._sort(exc)
                if failure is _Failure.TOKEN:
                    await self.reauthenticate(endpoint)  # refused before it was applied
                elif failure is _Failure.LEASE:
                    raise LeaseNotFound(exc.details() or "", maybe_applied=maybe_sent) from exc
                elif failure is _Failure.BUSY:
                    pass  # refused before it was proposed: maybe_sent stays as it was
                elif failure is _Failure.REFUSED:
                    if maybe_sent and not _refuses_every_copy(exc):
                        raise self._lost(what, exc, maybe_sent=True, refused=True) from exc
                    raise StorageError(
                        f"etcd refused the {what}: {_hint(exc.details() or '')}"
                    ) from exc
                else:
                    self.failed(endpoint)
                    if failure is _Failure.MEMBER_DOWN:
                        refused.add(endpoint.index)
                        if len(refused) == len(self._endpoints) and not maybe_sent:
                            raise self.unavailable(what, exc) from exc
                    elif failure is _Failure.MAYBE_APPLIED:
                        # It may have been applied: from now on keep trying until the
                        # deadline, to learn the outcome (the request is idempotent).
                        maybe_sent = True
                self.retries += 1
                await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
                delay = min(delay * 2, 0.5)
                continue
            self.contact()
            return result

    def _lost(
        self,
        what: str,
        exc: grpc.aio.AioRpcError | None,
        maybe_sent: bool,
        refused: bool = False,
    ) -> StoreUnavailable:
        """The error for a write that got no usable answer before its deadline."""
        if not maybe_sent:
            return self.unavailable(what, exc)
        reason = f" (last error: {describe(exc)})" if exc is not None else ""
        ending = (
            "etcd then refused the retry"
            if refused
            else f"no answer came within the {self.config.timeout:g}s timeout"
        )
        return OutcomeUnknown(
            f"the {what} was sent to etcd at {self.config.display} but "
            f"{ending}{reason}; it may or may not have been applied, and it was not retried "
            "blindly. Read the state again before retrying."
        )

    async def _handle(
        self, what: str, endpoint: Endpoint, exc: grpc.aio.AioRpcError, refused: set[int]
    ) -> None:
        """Decide whether a failed attempt may be retried; raise if it may not."""
        failure = self._sort(exc)
        if failure is _Failure.TOKEN:
            await self.reauthenticate(endpoint)
        elif failure is _Failure.LEASE:
            raise LeaseNotFound(exc.details() or "") from exc
        elif failure is _Failure.BUSY:
            pass  # a lease grant goes through raft too: wait, the member is busy
        elif failure is _Failure.REFUSED:
            raise StorageError(f"etcd refused the {what}: {_hint(exc.details() or '')}") from exc
        else:
            self.failed(endpoint)
            if failure is _Failure.MEMBER_DOWN:
                refused.add(endpoint.index)
                if len(refused) == len(self._endpoints):
                    raise self.unavailable(what, exc) from exc

    def _sort(self, exc: grpc.aio.AioRpcError) -> _Failure:
        """What a failed attempt tells, the one sorting for reads and writes."""
        code, details = exc.code(), exc.details() or ""
        if self.token_refused(exc):
            return _Failure.TOKEN
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return _Failure.LEASE
        if _busy(exc):
            return _Failure.BUSY
        if code not in TRANSIENT:
            return _Failure.REFUSED
        lowered = details.lower()
        if any(hint in lowered for hint in _REFUSED_HINTS):
            return _Failure.MEMBER_DOWN
        if any(hint in lowered for hint in _UNPROPOSED_HINTS):
            return _Failure.UNPROPOSED
        return _Failure.MAYBE_APPLIED

    async def stream_failed(self, what: str, endpoint: Endpoint, exc: grpc.aio.AioRpcError) -> None:
        """A stream (watch, keep-alive) on `endpoint` broke: get a new token if
        etcd refused ours, otherwise move later calls to the next member."""
        log.warning("etcd %s on %s failed: %s", what, endpoint.address, describe(exc))
        if self.token_refused(exc):
            await self.reauthenticate(endpoint)
            return
        self.failed(endpoint)

    def token_refused(self, exc: grpc.aio.AioRpcError) -> bool:
        """etcd refused the token (expired, or issued before a change to users or roles).

        A JWT token carries the auth revision it was issued at, so after any
        `etcdctl user/role` change etcd answers "revision of auth store is old"
        to it for good; a simple token can hit the same when a change races a call.
        """
        if not self.config.user:
            return False
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return True
        return "revision of auth store is old" in (exc.details() or "")

    def unavailable(self, what: str, exc: BaseException | None = None) -> StoreUnavailable:
        """The error for "etcd cannot be reached"; the message tells an operator where to look."""
        reason = ""
        if isinstance(exc, grpc.aio.AioRpcError):
            reason = f" (last error: {describe(exc)})"
            if self.config.tls and any(h in (exc.details() or "").lower() for h in _TLS_HINTS):
                return StoreUnavailable(
                    f"the TLS handshake with etcd at {self.config.display} failed; the {what} "
                    "was not made. Check that the store URL's ca= signed etcd's --cert-file and "
                    "that the certificate names the address used, and give cert= and key= if "
                    f"etcd has --client-cert-auth{reason}."
                )
        return StoreUnavailable(
            f"etcd at {self.config.display} is unreachable or has no leader; the {what} "
            f"was not made{reason}. Reads are served from this agent's copy and may be stale."
        )

    # -- auth --------------------------------------------------------------

    async def reauthenticate(self, endpoint: Endpoint) -> None:
        """The token was refused (expired): get a new one, or move on if the member is gone.

        Raises:
            StorageError: etcd rejected the user name or password.
        """
        try:
            await self.authenticate(endpoint, stale=self._token)
        except grpc.aio.AioRpcError:
            self.failed(endpoint)

    async def authenticate(self, endpoint: Endpoint, stale: str | None = None) -> None:
        """Get a token for the configured user (once, however many callers ask).

        Raises:
            StorageError: etcd rejected the user name or password.
            grpc.aio.AioRpcError: the member could not be reached (retried by callers).
        """
        if not self.config.user:
            return
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return
            request = rpc.AuthenticateRequest(name=self.config.user, password=self.config.password)
            try:
                response = await endpoint.auth.Authenticate(request, timeout=ATTEMPT_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in TRANSIENT:
                    raise
                raise StorageError(
                    f"etcd rejected user {self.config.user!r}: {exc.details()}"
                ) from exc
            self._token = response.token


def _busy(exc: grpc.aio.AioRpcError) -> bool:
    """etcd's "too many requests": refused before it was proposed, so retried."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _BUSY_HINT in (
        (exc.details() or "").lower()
    )


def _refuses_every_copy(exc: grpc.aio.AioRpcError) -> bool:
    """True when etcd refused the request for its bytes alone, so that every
    earlier copy of it (the same bytes: a retry sends the very same request)
    was refused too, and nothing of it can have been applied.

    INVALID_ARGUMENT is etcd's check of the request itself before it is
    proposed (too many operations, a duplicate key, "request is too large"),
    against the member's --max-txn-ops and --max-request-bytes, which every
    member of a cluster is given alike (a cluster whose members differ could
    have applied the copy a laxer member took: not supported). gRPC's own
    RESOURCE_EXHAUSTED "larger than max" is of the message size alone. Any
    other RESOURCE_EXHAUSTED is not: "database space exceeded" depends on
    the state, and an earlier copy may have been applied before the quota
    filled; "too many requests" is retried (_busy) before this is asked.
    """
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and _SIZE_HINT in (exc.details() or "")


def _hint(details: str) -> str:
    """etcd's message, with what to do for the errors an operator can fix."""
    lowered = details.lower()
    if "too many operations" in lowered:
        return f"{details} (raise --max-txn-ops on the etcd members)"
    if "request is too large" in lowered:
        return f"{details} (raise --max-request-bytes on the etcd members)"
    if "space exceeded" in lowered:
        return f"{details} (compact and defragment etcd, or raise --quota-backend-bytes)"
    if "permission denied" in lowered:
        return f"{details} (grant the etcd user read-write on the waypost prefix)"
    if "user name is empty" in lowered:
        return (
            f"{details} (etcd has authentication on: give user:password@ or user= and "
            "password_file= in the store URL, or a client certificate whose CN is an etcd user)"
        )
    return details


def describe(exc: Any) -> str:
    """A short description of a gRPC error for logs."""
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").strip().removeprefix(_CONNECT_PREFIX)
        return f"{exc.code().name}: {details[:300]}"
    return repr(exc)
