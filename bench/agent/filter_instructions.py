"""Instructions per `?filter=` evaluation and per compile, counted by callgrind.

The cold cost of a filtered read is timed in filtered_read.py, but on a shared
2-core machine those microseconds swing 2x between runs; instruction counts
do not. For each tree (its `src/` on PYTHONPATH) this runs the same Python
script twice under `valgrind --tool=callgrind`, once with COUNT operations and
once with none, and reports the difference per operation: so interpreter
start-up and imports cancel out.

    .venv/bin/python bench/agent/filter_instructions.py --tree /path/to/old/checkout --tree .

Operations (one encoded /v1/health/service row, as the read path tests it):
    two-term   Service.Meta.version == "2" and "v1" in Service.Tags
    checks     Checks.Status == critical           (through the list of checks)
    any        any Service.Tags as t { t == "v1" } and "/Service/Meta/version" == "2"
               (trees whose filter has collection expressions only)
    compile    compiling the two-term expression, the cache cleared each time
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import header, line

SCRIPT = r"""
import sys
from waypost.api import filter_fields
from waypost.api import filter as f
row = {"Node": {"Node": "n1", "Meta": {"rack": "r2"}},
       "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1"], "Meta": {"version": "2"},
                   "Port": 8080},
       "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                  {"CheckID": "web-1-ttl", "Status": "passing"}]}
EXPRESSIONS = {
    "two-term": 'Service.Meta.version == "2" and "v1" in Service.Tags',
    "checks": "Checks.Status == critical",
    "any": 'any Service.Tags as t { t == "v1" } and "/Service/Meta/version" == "2"',
}
what, count = sys.argv[1], int(sys.argv[2])
if what == "compile":
    for _ in range(count):
        f._compiled.clear()
        f.compile_filter(EXPRESSIONS["two-term"], filter_fields.HEALTH_ROW)
else:
    keep = f.compile_filter(EXPRESSIONS[what], filter_fields.HEALTH_ROW)
    for _ in range(count):
        keep(row)
"""
COUNTS = {"two-term": 20000, "checks": 20000, "any": 20000, "compile": 2000}


def total(tree: Path, what: str, count: int) -> int:
    """Instructions of the whole process (callgrind's `summary:` line)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONHASHSEED": "0"}
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        subprocess.run(
            [*cmd, "-c", SCRIPT, what, str(count)], env=env, check=True, capture_output=True
        )
        found = re.search(r"^summary: (\d+)", Path(out).read_text(), re.M)
        assert found, "no summary in callgrind's output"
        return int(found.group(1))


def supports(tree: Path, what: str) -> bool:
    if what != "any":
        return True
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    probe = subprocess.run([sys.executable, "-c", SCRIPT, what, "1"], env=env, capture_output=True)
    return probe.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, required=True)
    args = parser.parse_args()
    header("instructions per ?filter= operation (callgrind)")
    for what, count in COUNTS.items():
        for tree in args.tree:
            if not supports(tree, what):
                line(f"{what:9s} {tree}: not supported")
                continue
            per = (total(tree, what, count) - total(tree, what, 0)) / count
            line(f"{what:9s} {tree}: {per:,.0f} instructions per operation")


if __name__ == "__main__":
    main()
