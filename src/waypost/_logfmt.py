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


def _timestamp(created: float, msecs: float) -> str:
    # strftime is most of a line's cost; a busy agent logs many lines a second.
    whole = int(created)
    last, text = _second[0]
    if whole != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int(msecs):03d}Z"


def _level(levelname: str) -> str:
    return _SHORT.get(levelname, levelname)


_PREFIXES: dict[tuple[str, str], str] = {}  # (level, logger) -> " [INFO]  logger: "


class ConsulFormatter(logging.Formatter):
    """`TIME [LEVEL] logger: message`, the level padded as Consul pads it."""

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(
            record.created, record.msecs, record.levelname, record.name, record.getMessage()
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def line(self, created: float, msecs: float, levelname: str, name: str, message: str) -> str:
        """The line of a record without an exception (agent/logs.py writes
        the hottest lines through here without building the record)."""
        prefix = _PREFIXES.get((levelname, name))
        if prefix is None:
            level = _level(levelname)
            prefix = f" [{level}] {' ' * (5 - len(level))}{name}: "
            if len(_PREFIXES) < 1024:  # loggers are few; this stays small whatever runs
                _PREFIXES[(levelname, name)] = prefix
        return _timestamp(created, msecs) + prefix + message


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with Consul's keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = self._entry(
            record.created, record.msecs, record.levelname, record.name, record.getMessage()
        )
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)

    def line(self, created: float, msecs: float, levelname: str, name: str, message: str) -> str:
        """As ConsulFormatter.line."""
        return json.dumps(self._entry(created, msecs, levelname, name, message), ensure_ascii=False)

    @staticmethod
    def _entry(
        created: float, msecs: float, levelname: str, name: str, message: str
    ) -> dict[str, str]:
        return {
            "@timestamp": _timestamp(created, msecs),
            "@level": _level(levelname).lower(),
            "@module": name,
            "@message": message,
        }
