"""Health checking: probes, flap thresholds, the runner and its clocks."""

from .clock import Clock, FakeClock, SystemClock
from .runner import HealthRunner

__all__ = ["Clock", "FakeClock", "HealthRunner", "SystemClock"]
