"""Retry decisions and the retry budget.

A retry budget caps retries at `ratio` of the original requests plus a floor of
`min_per_second` retries per second, both counted over a sliding `window`
(Finagle/Linkerd defaults: 20 %, 10/s, 10 s). When a dependency is down, every
request failing and being retried would double the load on what is left; the
budget stops that amplification while still letting occasional failures be
retried when traffic is light.

The window is kept as one-second buckets in a ring, so recording and checking
cost O(1) and memory is O(window).
"""

from __future__ import annotations

import math
from typing import Any, Final

from .._clock import MONOTONIC, Clock

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRYABLE_STATUS: Final = frozenset({502, 503, 504})
FAILURE_STATUS: Final = frozenset({500, 502, 503, 504})


class RetryBudget:
    """Allows a retry only while retries stay within the budget.

    Args:
        ratio: Retries allowed per original request (0.2 = 20 %).
        min_per_second: Retries per second always allowed (the floor).
        window: Length of the sliding window, seconds.
        clock: Time source.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if ratio < 0 or min_per_second < 0 or window <= 0:
            raise ValueError("retry budget ratio, floor and window must be positive")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self.clock = clock or MONOTONIC
        self._size = max(1, math.ceil(window))
        self._requests = [0] * self._size
        self._retries = [0] * self._size
        self._second = math.floor(self.clock.now())
        self.denied = 0

    def record_request(self) -> None:
        """Count one original (non-retry) request."""
        self._advance()
        self._requests[self._second % self._size] += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget if one is left; `False` if spent."""
        self._advance()
        if sum(self._retries) + 1 > self.allowed():
            self.denied += 1
            return False
        self._retries[self._second % self._size] += 1
        return True

    def allowed(self) -> float:
        """Retries the window allows in total right now."""
        self._advance()
        return self.ratio * sum(self._requests) + self.min_per_second * self.window

    def statistics(self) -> dict[str, Any]:
        """Requests, retries and denials in the current window."""
        self._advance()
        return {
            "requests": sum(self._requests),
            "retries": sum(self._retries),
            "allowed": self.allowed(),
            "denied": self.denied,
        }

    def _advance(self) -> None:
        second = math.floor(self.clock.now())
        if second <= self._second:
            return
        for s in range(self._second + 1, min(second, self._second + self._size) + 1):
            self._requests[s % self._size] = 0
            self._retries[s % self._size] = 0
        self._second = second


def is_idempotent(method: str) -> bool:
    """Whether a request with this HTTP method may safely be sent twice."""
    return method.upper() in IDEMPOTENT_METHODS
