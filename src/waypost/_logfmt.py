"""Values in log lines, quoted one way everywhere: `output="connection refused"`.

Log lines put their facts as `key=value` pairs (agent/logs.py); a value that
may hold spaces or newlines (a check's output, a maintenance reason) goes
through `quote`, so one event stays one greppable line.

A top-level private module: any layer may import it; it imports no package.
"""

from __future__ import annotations

import json

OUTPUT_LIMIT = 200  # characters of a check's output in a log line


def quote(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """`text` as a double-quoted, escaped string, cut to `limit` characters."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text, ensure_ascii=False)
