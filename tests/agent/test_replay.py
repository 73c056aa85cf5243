"""The agent's replay at start-up: under a paused collector, then frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from waypost.agent.runtime import _open_frozen, _settle_collector
from waypost.catalog import Catalog
from waypost.storage import Entry, open_storage


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the test process's collector as it found it."""
    was = gc.isenabled()
    yield
    gc.unfreeze()
    if was:
        gc.enable()


async def test_replay_runs_without_the_collector_and_freezes_what_it_built(
    collector: None, tmp_path: Path
) -> None:
    """Nothing the replay builds is garbage: the collector waits, and what is
    alive afterwards goes to the permanent generation that full collections
    skip (a full collection over 1M instances stalled the loop for seconds)."""
    gc.enable()
    gc.unfreeze()
    states: list[bool] = []
    catalog = Catalog(open_storage(f"sqlite:///{tmp_path}/c.db"))
    apply = catalog._apply

    def spy(index: int, entries: list[Entry], snapshot: bool = False) -> None:
        states.append(gc.isenabled())
        apply(index, entries, snapshot)

    catalog._apply = spy  # type: ignore[method-assign]
    await _open_frozen(catalog)
    assert states == [False]  # the replay ran with the collector paused
    assert gc.isenabled()  # and it runs again afterwards
    assert gc.get_freeze_count() > 0
    await catalog.close()


async def test_a_collector_that_was_off_stays_off(collector: None) -> None:
    gc.disable()
    catalog = Catalog(open_storage("memory://"))
    await _open_frozen(catalog)
    assert not gc.isenabled()
    await catalog.close()


def test_start_up_leaves_the_collector_nothing_young(collector: None) -> None:
    """What start-up built after the replay is frozen too (nothing for the
    first collections under load to walk), and its garbage freed, not frozen."""
    gc.enable()
    built = [[n] for n in range(5000)]  # what start-up keeps
    garbage = Cycle()
    garbage.me = garbage
    gone = weakref.ref(garbage)
    del garbage
    _settle_collector()
    assert gone() is None  # collected before the freeze
    assert len(gc.get_objects()) < 100  # 5,000 and more without the freeze
    assert gc.is_tracked(built[0])


class Cycle:
    me: object = None
