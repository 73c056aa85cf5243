"""History check: kill -9 in the middle of concurrent writes loses no acknowledged effect.

Eight writers each own a few service IDs and run a bounded random history on
them (register, re-register with other tags and port, deregister), one request
at a time per writer, so each ID's history is sequential. Every operation
carries a value of its own (port and tags). The agent (sqlite) is killed
mid-stream; after a restart each ID must hold the effect of its last
acknowledged operation, or of the one operation that was in flight, unanswered,
when the agent died.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import httpx

from ..wait import until
from .support import ok, start_agent

WRITERS = 8
IDS_PER_WRITER = 6
MAX_OPS = 1_000  # per writer: the history is bounded even if the kill came late
KILL_AFTER = 1_500  # acknowledged operations, all writers together
NAME = "hist"

Value = tuple[tuple[str, ...], int] | None  # (tags, port) of a registration; None: absent


class Writer(threading.Thread):
    def __init__(self, url: str, number: int, acked: list[int], lock: threading.Lock) -> None:
        super().__init__(name=f"writer-{number}", daemon=True)
        self.url = url
        self.number = number
        self.ids = [f"h{number}-{k}" for k in range(IDS_PER_WRITER)]
        self.last_acked: dict[str, Value] = dict.fromkeys(self.ids)
        self.in_flight: tuple[str, Value] | None = None  # unanswered at the kill
        self.refused: list[str] = []  # answered, but not 200: never expected
        self.ops = 0
        self.finished = False  # ran all MAX_OPS without the agent dying
        self.acked = acked
        self.lock = lock
        self.rng = random.Random(1000 + number)

    def next_op(self, seq: int) -> tuple[str, Value]:
        sid = self.rng.choice(self.ids)
        if self.last_acked[sid] is None or self.rng.random() < 0.65:
            value: Value = ((f"w{self.number}", f"op{seq}"), 10_000 + seq)
            return sid, value
        return sid, None

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            for seq in range(MAX_OPS):
                sid, value = self.next_op(seq)
                try:
                    if value is None:
                        r = http.put(f"/v1/agent/service/deregister/{sid}")
                    else:
                        tags, port = value
                        body = {"Name": NAME, "ID": sid, "Tags": list(tags), "Port": port}
                        r = http.put("/v1/agent/service/register", json=body)
                except httpx.HTTPError:
                    self.in_flight = (sid, value)  # the agent died under us: no answer
                    return
                self.ops += 1
                if r.status_code != 200:
                    self.refused.append(f"{sid} {value}: HTTP {r.status_code} {r.text!r}")
                    self.in_flight = (sid, value)  # not acknowledged; stop this history here
                    return
                self.last_acked[sid] = value
                with self.lock:
                    self.acked[0] += 1
        self.finished = True


def stored_values(http: httpx.Client) -> dict[str, Value]:
    services: dict[str, Any] = ok(http.get("/v1/agent/services"), "GET /v1/agent/services").json()
    values: dict[str, Value] = {}
    for sid, s in services.items():
        assert s["Service"] == NAME, f"unexpected service {sid}: {s}"
        values[sid] = (tuple(s["Tags"]), s["Port"])
    catalog = ok(http.get(f"/v1/catalog/service/{NAME}"), "GET /v1/catalog/service").json()
    in_catalog = {
        row["ServiceID"]: (tuple(row["ServiceTags"]), row["ServicePort"]) for row in catalog
    }
    assert in_catalog == values, (
        f"the catalog and the agent disagree after the restart: {in_catalog} vs {values}"
    )
    return values


def test_kill_9_mid_history_keeps_every_acknowledged_effect(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "n1", dns=False)
    acked = [0]
    lock = threading.Lock()
    writers = [Writer(agent.http_url, n, acked, lock) for n in range(WRITERS)]
    try:
        for w in writers:
            w.start()
        until(lambda: acked[0] >= KILL_AFTER or all(w.finished for w in writers), timeout=60)
        agent.kill()  # SIGKILL mid-stream
        for w in writers:
            w.join(15)
        assert not any(w.is_alive() for w in writers), "a writer did not stop after the kill"
        refused = [x for w in writers for x in w.refused]
        assert not refused, f"operations refused while the agent ran: {refused[:5]}"
        assert not all(w.finished for w in writers), (
            f"every writer finished its {MAX_OPS} operations before the kill: nothing was in "
            "flight, so this run did not test a kill mid-stream"
        )

        agent = start_agent(tmp_path, "n1", dns=False)
        with agent.client() as http:
            stored = stored_values(http)
        known = {sid for w in writers for sid in w.ids}
        violations = [f"{sid} is stored but was never written" for sid in set(stored) - known]
        for w in writers:
            for sid in w.ids:
                allowed = [w.last_acked[sid]]
                if w.in_flight is not None and w.in_flight[0] == sid:
                    allowed.append(w.in_flight[1])
                found = stored.get(sid)
                if found not in allowed:
                    violations.append(
                        f"{sid}: stored {found}, last acknowledged {w.last_acked[sid]}"
                        + (f", in flight {w.in_flight[1]}" if len(allowed) > 1 else "")
                    )
        total = sum(w.ops for w in writers)
        assert not violations, (
            f"{len(violations)} IDs lost their last acknowledged operation across kill -9 "
            f"({total} operations answered, {acked[0]} acknowledged): {violations[:8]}"
        )
    finally:
        agent.kill()
