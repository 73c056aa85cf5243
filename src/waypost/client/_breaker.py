"""Per-instance circuit breakers: the full closed / open / half-open machine.

    CLOSED --(N consecutive failures, or failure rate >= R over the last W
              calls with at least M calls)--> OPEN
    OPEN   --(open time elapsed; checked lazily on read)--> HALF_OPEN
    HALF_OPEN: at most `half_open_probes` calls are let through at once.
        every probe succeeded (`half_open_probes` successes) --> CLOSED
        any probe failed                                      --> OPEN again,
                                                                 open time x multiplier
    The open time starts at `open_base`, grows by `multiplier` with each
    consecutive trip, is capped at `open_max`, and resets once the breaker closes.

Outcomes of calls that started before the breaker opened are ignored while it is
open, and while half-open when no probe is out: they describe the past. A
probe that ends without an outcome (cancelled) gives its permit back through
`release()`.

Pure and synchronous; time comes from an injectable clock.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

from .._clock import MONOTONIC, Clock


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker trips and how it recovers.

    Attributes:
        consecutive_failures: Trip after this many failures in a row.
        failure_rate: Trip when the failure share of the window reaches this.
        window: Number of recent calls the failure rate is computed over.
        min_calls: The failure rate is only judged with at least this many calls.
        open_base: First open time, seconds.
        open_max: Cap on the open time, seconds.
        multiplier: Growth of the open time with each consecutive trip.
        half_open_probes: Concurrent trial calls allowed while half-open; this
            many successes close the breaker.
    """

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window: int = 50
    min_calls: int = 20
    open_base: float = 1.0
    open_max: float = 60.0
    multiplier: float = 2.0
    half_open_probes: int = 1


class CircuitBreaker:
    """One instance's breaker.

    Args:
        policy: Thresholds and timings.
        clock: Time source.
    """

    def __init__(self, policy: BreakerPolicy | None = None, clock: Clock | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self.clock = clock or MONOTONIC
        self._state = BreakerState.CLOSED
        self._recent: deque[bool] = deque(maxlen=self.policy.window)
        self._failures_in_row = 0
        self._trips = 0
        self._opened_at = 0.0
        self._open_for = 0.0
        self._probes_out = 0
        self._probe_successes = 0
        self.transitions = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose time is up reads as half-open)."""
        if self._state is BreakerState.OPEN and self.clock.now() >= self.reopen_at:
            self._to_half_open()
        return self._state

    @property
    def reopen_at(self) -> float:
        """When an open breaker will let probes through."""
        return self._opened_at + self._open_for

    def available(self) -> bool:
        """Whether a call may go through now (without claiming a probe permit)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._probes_out < self.policy.half_open_probes
        return False

    def acquire(self) -> bool:
        """Claim permission for one call; in half-open this takes a probe permit."""
        if not self.available():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._probes_out += 1
        return True

    def release(self) -> None:
        """Give back a probe permit for a call that ended without an outcome."""
        if self._state is BreakerState.HALF_OPEN and self._probes_out > 0:
            self._probes_out -= 1

    def record(self, ok: bool) -> None:
        """Record the outcome of a call that `acquire()` allowed."""
        state = self.state
        if state is BreakerState.OPEN:
            return
        if state is BreakerState.HALF_OPEN:
            self._record_probe(ok)
        else:
            self._record_closed(ok)

    def statistics(self) -> dict[str, Any]:
        """State, counters and timings for metrics."""
        return {
            "state": self.state.value,
            "failures_in_row": self._failures_in_row,
            "trips": self._trips,
            "transitions": self.transitions,
            "reopen_at": self.reopen_at if self._state is BreakerState.OPEN else None,
        }

    def _record_closed(self, ok: bool) -> None:
        self._recent.append(ok)
        self._failures_in_row = 0 if ok else self._failures_in_row + 1
        if not ok and self._should_trip():
            self._to_open()

    def _should_trip(self) -> bool:
        p = self.policy
        if self._failures_in_row >= p.consecutive_failures:
            return True
        calls = len(self._recent)
        if calls < p.min_calls:
            return False
        return self._recent.count(False) / calls >= p.failure_rate

    def _record_probe(self, ok: bool) -> None:
        if self._probes_out == 0:
            return  # not a probe: a call from before the trip, finishing late
        self._probes_out -= 1
        if not ok:
            self._to_open()
            return
        self._probe_successes += 1
        if self._probe_successes >= self.policy.half_open_probes:
            self._to_closed()

    def _to_open(self) -> None:
        p = self.policy
        self._open_for = min(p.open_max, p.open_base * p.multiplier**self._trips)
        self._trips += 1
        self._opened_at = self.clock.now()
        self._set(BreakerState.OPEN)

    def _to_half_open(self) -> None:
        self._probes_out = 0
        self._probe_successes = 0
        self._set(BreakerState.HALF_OPEN)

    def _to_closed(self) -> None:
        self._trips = 0
        self._failures_in_row = 0
        self._recent.clear()
        self._set(BreakerState.CLOSED)

    def _set(self, state: BreakerState) -> None:
        self._state = state
        self.transitions += 1
