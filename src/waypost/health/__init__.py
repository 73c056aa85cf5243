"""Health checking: probes, flap thresholds, the runner (and the clock it runs on)."""

from .._clock import Clock, FakeClock, SystemClock
from .runner import HealthRunner

__all__ = ["Clock", "FakeClock", "HealthRunner", "SystemClock"]
