"""The agent's log lines, one layout everywhere: Consul's, or JSON for log shippers.

    2026-12-01T10:00:00.123Z [INFO]  waypost.agent: registered service: id=payment-1 ...
    {"@timestamp": "...", "@level": "info", "@module": "waypost.agent", "@message": "..."}

Both carry the same message; the JSON keys are the ones Consul's `-log-json`
writes, so a shipper configured for Consul reads waypost's logs unchanged.
Messages put their facts as `key=value` pairs after a colon; a value that may
hold spaces or newlines (a check's output, a maintenance reason) goes through
`quote`, so one event stays one greppable line. The agent's stderr
(agent/logs.py) and `/v1/agent/monitor` (api/agent.py) both format with these.

A top-level private module: any layer may import it; it imports no package.
"""

from __future__ import annotations

import json
import logging
import time

OUTPUT_LIMIT = 200  # characters of a check's output in a log line
_SHORT = {"WARNING": "WARN", "CRITICAL": "ERROR"}


def quote(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """`text` as a double-quoted, escaped string, cut to `limit` characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text, ensure_ascii=False)


_second: list[tuple[int, str]] = [(-1, "")]  # the last second formatted, and its text


def _timestamp(record: logging.LogRecord) -> str:
    # strftime is most of a line's cost; a busy agent logs many lines a second.
    whole = int(record.created)
    last, text = _second[0]
    if whole != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int(record.msecs):03d}Z"


def _level(record: logging.LogRecord) -> str:
    return _SHORT.get(record.levelname, record.levelname)


_PREFIXES: dict[tuple[str, str], str] = {}  # (level, logger) -> " [INFO]  logger: "


class ConsulFormatter(logging.Formatter):
    """`TIME [LEVEL] logger: message`, the level padded as Consul pads it."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = _PREFIXES.get((record.levelname, record.name))
        if prefix is None:
            level = _level(record)
            prefix = f" [{level}] {' ' * (5 - len(level))}{record.name}: "
            if len(_PREFIXES) < 1024:  # loggers are few; this stays small whatever runs
                _PREFIXES[(record.levelname, record.name)] = prefix
        line = _timestamp(record) + prefix + record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with Consul's keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "@timestamp": _timestamp(record),
            "@level": _level(record).lower(),
            "@module": record.name,
            "@message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
