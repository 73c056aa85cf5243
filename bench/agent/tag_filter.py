"""The `?tag=` / DNS tag rule (catalog/model.py `carries`) against the two forms it replaced.

In process, no agent: 100 instances of one service, a tenth of them tagged
"Primary", filtered by the tag "primary" (Consul compares tags without case).
Each form is timed with timeit (2,000 calls, best of 5, five times: median and
range), in microseconds per filter of the 100 instances:

- `State.instances` (`?tag=` reads) as it is, and as it was with a lowercased
  set built per instance;
- the DNS answer path's test as it is (`carries`), and as it was inline
  (`any(t.lower() == tag ...)`).

Usage: .venv/bin/python bench/agent/tag_filter.py
"""

from __future__ import annotations

import statistics
import timeit

from _common import header, line

from waypost.catalog.model import Service, carries
from waypost.catalog.state import State

SERVICES = [
    Service(
        node=f"n{i}", id=f"web-{i}", name="web", tags=("v1", "Primary" if i % 10 == 0 else "edge")
    )
    for i in range(100)
]


def main() -> None:
    state = State()
    # Its index filled directly: only the filters are timed, no writes.
    state.by_name["web"] = {(s.node, s.id): s for s in SERVICES}
    wanted = {"primary"}
    forms = {
        "?tag= read, State.instances now": lambda: state.instances("web", ["primary"]),
        "?tag= read, a lowercased set per instance (before)": lambda: [
            s for s in SERVICES if wanted.issubset({t.lower() for t in s.tags})
        ],
        "DNS test, carries now": lambda: [s for s in SERVICES if carries(s, "primary")],
        "DNS test, inline generator (before)": lambda: [
            s for s in SERVICES if any(t.lower() == "primary" for t in s.tags)
        ],
    }
    results = {name: form() for name, form in forms.items()}
    assert all(len(r) == 10 for r in results.values()), "the forms disagree"
    header("tag filter over 100 instances, one tag, microseconds per filter")
    for name, form in forms.items():
        runs = [min(timeit.repeat(form, number=2000, repeat=5)) / 2000 * 1e6 for _ in range(5)]
        line(
            f"{name}: median {statistics.median(runs):.1f} us "
            f"(range {min(runs):.1f}-{max(runs):.1f})"
        )


if __name__ == "__main__":
    main()
