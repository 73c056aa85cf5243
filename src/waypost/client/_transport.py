"""httpx transports that turn `http://<service>/...` into a balanced call.

`AsyncTransport` wraps a real transport (`httpx.AsyncHTTPTransport` by default).
For a request whose host is a service name it:

1. reads the service's instances from the discovery cache (no I/O when warm)
   and hands changes to the service's `Router`;
2. picks an instance (balancer, breakers, outlier ejection, zone);
3. sends the request there, under the per-attempt timeout, optionally hedged;
4. reports the outcome and latency back to the router;
5. retries a retryable failure on a different instance while attempts and the
   retry budget last.

Requests to ordinary hosts (with a dot, `localhost`, IP literals) pass
straight through, so one `httpx.AsyncClient` can call both.

Latency is measured to the response headers; the body is streamed to the
caller afterwards as usual. The `Transport` twin does the same with blocking
I/O (no hedging: that needs concurrency).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from typing import Any

import httpx

from .._exceptions import ClientError, RetryBudgetExhausted
from ._discovery import AsyncDiscovery, Discovery
from ._instance import Instance
from ._policy import (
    ClientOptions,
    ServiceState,
    is_failure,
    is_service_host,
    may_hedge,
    may_retry_error,
    may_retry_response,
    to_instance,
)


class _Base:
    def __init__(self, options: ClientOptions, services: Collection[str] | None) -> None:
        self.options = options
        self.services = services
        self._states: dict[str, ServiceState] = {}

    def state(self, service: str) -> ServiceState:
        """The router, budget and latency history of one service."""
        state = self._states.get(service)
        if state is None:
            state = self._states[service] = ServiceState(service, self.options)
        return state

    def statistics(self) -> dict[str, Any]:
        """Per-service router and budget statistics."""
        return {
            name: {**s.router.statistics(), "retry_budget": s.budget.statistics()}
            for name, s in self._states.items()
        }

    def _budget_error(self, service: str, exc: Exception) -> RetryBudgetExhausted:
        return RetryBudgetExhausted(
            f"request to service {service!r} failed ({type(exc).__name__}: {exc}) and the "
            "retry budget is spent (too many retries recently)",
            service=service,
        )


class AsyncTransport(_Base, httpx.AsyncBaseTransport):
    """An httpx async transport that balances `http://<service>/` requests.

    Args:
        discovery: Where instances come from.
        transport: The real transport (default `httpx.AsyncHTTPTransport()`).
        services: Host names to treat as services; default: any single-label
            name other than `localhost` given without a port.
        options: Balancer and resilience settings (`ClientOptions`).
        **kwargs: Shorthand for `ClientOptions` fields (`balancer="p2c"`, ...).
    """

    def __init__(
        self,
        discovery: AsyncDiscovery,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        services: Collection[str] | None = None,
        options: ClientOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(options or ClientOptions(**kwargs), services)
        self.discovery = discovery
        self.inner = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        service = request.url.host
        if not is_service_host(request.url, self.services):
            return await self.inner.handle_async_request(request)
        state = self.state(service)
        state.refresh(await self.discovery.entry(service, tag=self.options.tag))
        total = self.options.total_timeout
        if total is None:
            return await self._send(state, request)
        try:
            async with asyncio.timeout(total):
                return await self._send(state, request)
        except TimeoutError as exc:
            raise httpx.TimeoutException(
                f"request to service {service!r} took longer than {total}s in total",
                request=request,
            ) from exc

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _send(self, state: ServiceState, request: httpx.Request) -> httpx.Response:
        state.budget.record_request()
        tried: set[str] = set()
        previous: Exception | None = None
        attempts = max(1, self.options.retry.attempts)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            instance = _pick(state, request, tried, previous)
            tried.add(instance.id)
            try:
                response = await self._hedged(state, request, instance, tried)
            except httpx.TransportError as exc:
                if last or not may_retry_error(self.options, request, exc):
                    raise
                if not state.budget.try_retry():
                    raise self._budget_error(state.router.service, exc) from exc
                previous = exc
                continue
            status = response.status_code
            if last or not may_retry_response(self.options, request, status):
                return response
            if not state.budget.try_retry():
                return response
            await response.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, state: ServiceState, request: httpx.Request, instance: Instance
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self._send_one(to_instance(request, instance))
        except TimeoutError as exc:
            state.router.report(instance, False, time.perf_counter() - started)
            raise httpx.ReadTimeout(
                f"{instance.url} took longer than {self.options.attempt_timeout}s",
                request=request,
            ) from exc
        except httpx.TransportError:
            state.router.report(instance, False, time.perf_counter() - started)
            raise
        except BaseException:
            state.router.release(instance)
            raise
        elapsed = time.perf_counter() - started
        ok = not is_failure(self.options, response)
        state.router.report(instance, ok, elapsed)
        if ok:
            state.latencies.add(elapsed)
        return response

    async def _send_one(self, request: httpx.Request) -> httpx.Response:
        if self.options.attempt_timeout is None:
            return await self.inner.handle_async_request(request)
        async with asyncio.timeout(self.options.attempt_timeout):
            return await self.inner.handle_async_request(request)

    async def _hedged(
        self, state: ServiceState, request: httpx.Request, first: Instance, tried: set[str]
    ) -> httpx.Response:
        delay = state.hedge_delay() if may_hedge(self.options, request) else None
        if delay is None:
            return await self._attempt(state, request, first)
        tasks = [asyncio.create_task(self._attempt(state, request, first))]
        try:
            done, _ = await asyncio.wait(tasks, timeout=delay)
            if not done and state.budget.try_retry():
                second = _hedge_target(state, request, tried)
                if second is not None:
                    tried.add(second.id)
                    tasks.append(asyncio.create_task(self._attempt(state, request, second)))
            return await _first_good(tasks, self.options)
        finally:
            for task in tasks:
                task.cancel()


def _pick(
    state: ServiceState, request: httpx.Request, tried: set[str], previous: Exception | None
) -> Instance:
    """Pick for an attempt; a retry that finds no instance keeps the earlier failure as cause."""
    try:
        return state.pick(request, tried)
    except ClientError as exc:
        if previous is None:
            raise
        raise exc from previous


def _hedge_target(state: ServiceState, request: httpx.Request, tried: set[str]) -> Instance | None:
    """A different instance for a hedge, or None when none is usable."""
    if len(tried) >= len(state.router.balancer):
        return None
    try:
        return state.router.pick(state.key_for(request), avoid=tried)
    except ClientError:
        return None


async def _first_good(
    tasks: list[asyncio.Task[httpx.Response]], options: ClientOptions
) -> httpx.Response:
    """The first successful response among racing attempts (else the first outcome)."""
    pending = set(tasks)
    outcomes: list[asyncio.Task[httpx.Response]] = []
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is None and not is_failure(options, task.result()):
                for other in tasks:
                    if other is not task:
                        await _discard(other)
                return task.result()
            outcomes.append(task)
    for other in outcomes[1:]:
        await _discard(other)
    return outcomes[0].result()


async def _discard(task: asyncio.Task[httpx.Response]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    if not task.cancelled() and task.exception() is None:
        await task.result().aclose()


class Transport(_Base, httpx.BaseTransport):
    """The blocking twin of `AsyncTransport` (no hedging).

    Args:
        discovery: Where instances come from.
        transport: The real transport (default `httpx.HTTPTransport()`).
        services: Host names to treat as services.
        options: Balancer and resilience settings.
        **kwargs: Shorthand for `ClientOptions` fields.
    """

    def __init__(
        self,
        discovery: Discovery,
        *,
        transport: httpx.BaseTransport | None = None,
        services: Collection[str] | None = None,
        options: ClientOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(options or ClientOptions(**kwargs), services)
        self.discovery = discovery
        self.inner = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        service = request.url.host
        if not is_service_host(request.url, self.services):
            return self.inner.handle_request(request)
        state = self.state(service)
        state.refresh(self.discovery.entry(service, tag=self.options.tag))
        return self._send(state, request)

    def close(self) -> None:
        self.inner.close()

    def _send(self, state: ServiceState, request: httpx.Request) -> httpx.Response:
        state.budget.record_request()
        deadline = _deadline(self.options.total_timeout)
        tried: set[str] = set()
        previous: Exception | None = None
        attempts = max(1, self.options.retry.attempts)
        for attempt in range(attempts):
            last = attempt == attempts - 1 or time.monotonic() >= deadline
            instance = _pick(state, request, tried, previous)
            tried.add(instance.id)
            try:
                response = self._attempt(state, request, instance)
            except httpx.TransportError as exc:
                if last or not may_retry_error(self.options, request, exc):
                    raise
                if not state.budget.try_retry():
                    raise self._budget_error(state.router.service, exc) from exc
                previous = exc
                continue
            if last or not may_retry_response(self.options, request, response.status_code):
                return response
            if not state.budget.try_retry():
                return response
            response.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self, state: ServiceState, request: httpx.Request, instance: Instance
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = self.inner.handle_request(to_instance(request, instance))
        except httpx.TransportError:
            state.router.report(instance, False, time.perf_counter() - started)
            raise
        except BaseException:
            state.router.release(instance)
            raise
        elapsed = time.perf_counter() - started
        ok = not is_failure(self.options, response)
        state.router.report(instance, ok, elapsed)
        if ok:
            state.latencies.add(elapsed)
        return response


def _deadline(total: float | None) -> float:
    return float("inf") if total is None else time.monotonic() + total
