"""Where the agent logs: stderr, in Consul's layout or as JSON lines (`--log-json`).

The layouts themselves are `_logfmt.py`'s, shared with `/v1/agent/monitor`.
"""

from __future__ import annotations

import logging
import sys

from .._logfmt import ConsulFormatter, JsonFormatter

_LEVELS = {"trace": "DEBUG", "warn": "WARNING"}


def setup(level: str, json: bool = False) -> None:
    """Log to stderr at `level` (Consul's names: trace, debug, info, warn, error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else ConsulFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, level.upper()))
