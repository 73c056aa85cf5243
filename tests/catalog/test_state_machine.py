"""Random sequences of catalog writes keep every index consistent, and replaying
the store (restart, etcd re-list) rebuilds exactly the same state."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from waypost import NotFoundError
from waypost.catalog import Catalog, State, codec
from waypost.catalog.watch import service_topic
from waypost.storage import Entry, open_storage

from ..helpers import check, node, service

NODES = st.sampled_from(["n1", "n2"])
NAMES = st.sampled_from(["web", "api"])
IDS = st.sampled_from(["a", "b", "c/1", "d%2F"])  # IDs with the key separator and escapes
STATUSES = st.sampled_from(["passing", "warning", "critical"])


def snapshot(state: State) -> tuple[object, ...]:
    return (state.nodes, state.services, state.checks, state.live)


class CatalogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.url = f"sqlite:///{Path(self.tmp.name)}/c.db"
        self.catalog = self.run(self._open(self.url))
        self.last_index = self.catalog.state.index
        self.seen_topic_index: dict[object, int] = {}

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @staticmethod
    async def _open(url: str) -> Catalog:
        catalog = Catalog(open_storage(url))
        await catalog.open()
        return catalog

    def teardown(self) -> None:
        self.run(self.catalog.close())
        self.loop.close()
        self.tmp.cleanup()

    @rule(n=NODES)
    def add_node(self, n: str) -> None:
        self.run(self.catalog.put(node(n)))

    @rule(n=NODES, sid=IDS, name=NAMES, statuses=st.lists(STATUSES, max_size=2))
    def register(self, n: str, sid: str, name: str, statuses: list[str]) -> None:
        checks = [check(f"{sid}:{k}", sid, name, n, status) for k, status in enumerate(statuses)]
        self.run(self.catalog.register_service(service(sid, name, n), checks, replace_checks=True))

    @rule(n=NODES, sid=IDS)
    def deregister(self, n: str, sid: str) -> None:
        try:
            self.run(self.catalog.deregister_service(n, sid))
        except NotFoundError:
            assert (n, sid) not in self.catalog.state.services

    @rule(n=NODES, status=STATUSES)
    def node_check(self, n: str, status: str) -> None:
        self.run(self.catalog.put(check("serfHealth", node_name=n, status=status)))

    @rule(n=NODES, alive=st.booleans())
    def liveness(self, n: str, alive: bool) -> None:
        key = codec.live_key(n)
        self.run(
            self.catalog.commit([Entry(key, b"", ephemeral=True) if alive else codec.delete(key)])
        )

    @rule(n=NODES, sid=IDS, status=STATUSES, output=st.text(max_size=5))
    def update(self, n: str, sid: str, status: str, output: str) -> None:
        try:
            self.run(self.catalog.update_check(n, f"{sid}:0", status, output))
        except NotFoundError:
            assert (n, f"{sid}:0") not in self.catalog.state.checks

    @rule()
    def restart_replays_the_same_state(self) -> None:
        before = snapshot(self.catalog.state)
        outputs = {k: c.output for k, c in self.catalog.state.checks.items()}
        self.run(self.catalog.close())
        self.catalog = self.run(self._open(self.url))
        after = snapshot(self.catalog.state)
        # Output-only changes are memory-only by design: compare without them.
        assert before[:2] == after[:2] and before[3] == after[3]
        assert set(before[2]) == set(after[2])  # type: ignore[arg-type]
        for key, restored in self.catalog.state.checks.items():
            assert restored.status == before[2][key].status  # type: ignore[index]
        assert outputs.keys() == self.catalog.state.checks.keys()

    @rule()
    def relist_rebuilds_the_same_state(self) -> None:
        """An etcd-style snapshot of everything the state holds changes nothing."""
        state = self.catalog.state
        entries = [
            codec.put(r)
            for r in [*state.nodes.values(), *state.services.values(), *state.checks.values()]
        ]
        entries += [Entry(codec.live_key(n), b"") for n in state.live]
        before = snapshot(state)
        fresh = State()
        fresh.apply(state.index, entries, snapshot=True)
        assert {k: v.name for k, v in fresh.services.items()} == {
            k: v.name for k, v in before[1].items()
        }  # type: ignore[attr-defined]
        assert {k: v.status for k, v in fresh.checks.items()} == {
            k: v.status for k, v in before[2].items()
        }  # type: ignore[attr-defined]

    @invariant()
    def indexes_are_consistent(self) -> None:
        state = self.catalog.state
        assert state.index >= self.last_index
        self.last_index = state.index
        by_name = {(k, s.id) for k, bucket in state.by_name.items() for s in bucket.values()}
        assert by_name == {(s.name, s.id) for s in state.services.values()}
        for (n, sid), svc in state.services.items():
            assert state.node_services[n][sid] is svc
        for (n, cid), c in state.checks.items():
            assert (n, c.service_id) in state.services or not c.service_id, "orphaned check"
            table = (
                state.service_checks[(n, c.service_id)] if c.service_id else state.node_checks[n]
            )
            assert table[cid] is c
            if cid == "serfHealth":
                assert c.status == ("passing" if n in state.live else "critical")
        for name in ("web", "api"):
            topic = service_topic(name)
            index = state.index_of([topic])
            assert index >= self.seen_topic_index.get(topic, 0)
            self.seen_topic_index[topic] = index
            expected = {
                s.id
                for s in state.services.values()
                if s.name == name and state.aggregate_status(s) == "passing"
            }
            assert {s.id for _, s, _ in state.health(name, passing=True)} == expected


CatalogMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_catalog_state_machine = CatalogMachine.TestCase
