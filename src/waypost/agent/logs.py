"""Where the agent logs: stderr, in Consul's layout or as JSON lines (`--log-json`).

The layouts themselves are `_logfmt.py`'s, shared with `/v1/agent/monitor`.
"""

from __future__ import annotations

import logging
import sys

from .._logfmt import ConsulFormatter, JsonFormatter

_LEVELS = {"trace": "DEBUG", "warn": "WARNING"}


def setup(level: str, json: bool = False) -> None:
    """Log to stderr at `level` (Consul's names: trace, debug, info, warn, error).

    The agent's layouts show neither the thread, the process nor the source
    line, so its records do not gather them (the logging HOWTO's
    "Optimization" switches): a registration logs a line, and finding the
    caller's frame and the thread's name was a quarter of that line's cost."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no findCaller(): nothing here prints a file or line
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else ConsulFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, level.upper()))


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes each line with one call and no flush
    after it: stderr is line-buffered (Python 3.9+, interactive or not), so
    each line is out when written. `handle` takes the lock itself rather
    than through `acquire`/`release`, and `emit` skips the flush call: a
    registration's INFO line is most of its cost above the core, and these
    frames were a tenth of the line."""

    def handle(self, record: logging.LogRecord) -> bool:
        admitted = self.filter(record)
        if admitted:
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                self.emit(record)
        return bool(admitted)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            stream.write(self.format(record) + "\n")
            if not getattr(stream, "line_buffering", False):
                stream.flush()
        except RecursionError:  # as logging's own handlers: never swallowed
            raise
        except Exception:
            self.handleError(record)
