"""The agent's log lines: Consul's layout, greppable, or JSON for log shippers.

    2026-12-01T10:00:00.123Z [INFO]  waypost.agent: registered service: id=payment-1 ...
    {"@timestamp": "...", "@level": "info", "@module": "waypost.agent", "@message": "..."}

Both carry the same message; the JSON keys are the ones Consul's `-log-json`
writes, so a shipper configured for Consul reads waypost's logs unchanged.
Messages put their facts as `key=value` pairs after a colon (`check=... status=...`).
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

_LEVELS = {"trace": "DEBUG", "warn": "WARNING"}
_SHORT = {"WARNING": "WARN", "CRITICAL": "ERROR"}
_ENCODER = msgspec.json.Encoder()


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class ConsulFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = _SHORT.get(record.levelname, record.levelname)
        line = f"{_timestamp(record)} [{level}] {' ' * (5 - len(level))}{record.name}: "
        line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "@timestamp": _timestamp(record),
            "@level": _SHORT.get(record.levelname, record.levelname).lower(),
            "@module": record.name,
            "@message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry).decode()


def setup(level: str, json: bool = False) -> None:
    """Log to stderr at `level` (Consul's names: trace, debug, info, warn, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else ConsulFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, level.upper()))
