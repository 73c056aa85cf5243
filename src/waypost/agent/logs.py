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
    """A StreamHandler without its flush after every line: stderr is
    line-buffered (Python 3.9+, interactive or not), so each line is out
    when written, and the second call per line was a tenth of its cost."""

    def flush(self) -> None:
        if not getattr(self.stream, "line_buffering", False):
            super().flush()
