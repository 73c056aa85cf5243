"""The agent's replay at start-up: under a paused collector, then frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from waypost.agent.runtime import _open_frozen
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
