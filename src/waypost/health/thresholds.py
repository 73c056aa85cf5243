"""Flap damping: SuccessBeforePassing, FailuresBeforeWarning, FailuresBeforeCritical.

A pure state machine fed with each raw probe result; it answers the status to
report. Counts are of consecutive results, as in Consul: a success resets the
failure count and a failure resets the success count.
"""

from __future__ import annotations


class Thresholds:
    def __init__(
        self,
        current: str,
        success_before_passing: int = 0,
        failures_before_warning: int = 0,
        failures_before_critical: int = 0,
    ) -> None:
        self.current = current
        self.successes_needed = max(1, success_before_passing)
        self.failures_to_critical = max(1, failures_before_critical)
        # Consul: FailuresBeforeWarning defaults to FailuresBeforeCritical.
        self.failures_to_warning = max(1, failures_before_warning or self.failures_to_critical)
        self._successes = 0
        self._failures = 0

    def feed(self, status: str) -> str:
        """Take one raw result ("passing", "warning" or "critical"); return the status to report."""
        if status == "passing":
            self._failures = 0
            self._successes += 1
            if self._successes >= self.successes_needed:
                self.current = "passing"
            return self.current
        if status == "warning":
            # A warning is reported as it comes: it is the check's own verdict.
            self._successes = self._failures = 0
            self.current = "warning"
            return self.current
        self._successes = 0
        self._failures += 1
        if self._failures >= self.failures_to_critical:
            self.current = "critical"
        elif self._failures >= self.failures_to_warning and self.current == "passing":
            self.current = "warning"
        return self.current
