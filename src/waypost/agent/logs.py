"""Where the agent logs: stderr, in Consul's layout or as JSON lines (`--log-json`).

The layouts themselves are `_logfmt.py`'s, shared with `/v1/agent/monitor`.
"""

from __future__ import annotations

import logging
import sys
import time

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
    global _direct
    _direct = handler


_direct: _LineHandler | None = None  # the agent's stderr handler, once set up
_INFO = logging.INFO


def info(logger: logging.Logger, msg: str, *args: object) -> None:
    """`logger.info(msg, *args)`, for the lines logged at every write.

    When the agent's stderr handler is the only one the record would reach
    (no other handler at INFO or below on the way to the root, no filter,
    no monitor listening, the agent's own layout), the line is formatted and
    written straight to it: the same bytes as through `logging`, without
    the LogRecord and the dozen frames of its handler chain (by callgrind,
    44.7k -> 25.7k instructions per line; it was the largest single cost of
    a registration above the core). Anything else, a
    test's capture handler, `/v1/agent/monitor`, a filter, goes through
    `logger.info` as before."""
    handler = _direct
    if handler is None or not handler.alone_for(logger):
        logger.info(msg, *args)
        return
    try:
        message = msg % args
    except Exception:  # logging reports a bad format itself: let it
        logger.info(msg, *args)
        return
    handler.write(logger.name, message)


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes each line with one call and no flush
    after it: stderr is line-buffered (Python 3.9+, interactive or not), so
    each line is out when written. `handle` takes the lock itself rather
    than through `acquire`/`release`, and `emit` skips the flush call: a
    registration's INFO line is most of its cost above the core, and these
    frames were a tenth of the line."""

    def handle(self, record: logging.LogRecord) -> bool:
        admitted = self.filter(record)
        if isinstance(admitted, logging.LogRecord):  # Python 3.12+: a filter's replacement
            record = admitted
        if admitted:
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                self.emit(record)
        return bool(admitted)

    def alone_for(self, logger: logging.Logger) -> bool:
        """Whether an INFO record of `logger` would reach this handler and
        no other one, unfiltered (Logger.handle and callHandlers' rules)."""
        if logger.disabled or logger.filters or not logger.isEnabledFor(_INFO):
            return False
        if self.filters or self.level > _INFO or not hasattr(self.formatter, "line"):
            return False
        reached = False
        node: logging.Logger | None = logger
        while node is not None:
            for other in node.handlers:
                if other is self:
                    reached = True
                elif other.level <= _INFO:
                    return False  # a monitor, a capture: they get the record
            if not node.propagate:
                break
            node = node.parent
        return reached

    def write(self, name: str, message: str) -> None:
        """An INFO line of logger `name`, as `emit` writes its record."""
        created = time.time()
        msecs = (created - int(created)) * 1000  # as LogRecord's, which the layout cuts to an int
        line = self.formatter.line(created, msecs, "INFO", name, message)  # type: ignore[union-attr]
        try:
            with self.lock:  # type: ignore[union-attr]
                stream = self.stream
                stream.write(line + "\n")
                if not getattr(stream, "line_buffering", False):
                    stream.flush()
        except Exception:
            self.handleError(logging.LogRecord(name, _INFO, "", 0, message, None, None))

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
