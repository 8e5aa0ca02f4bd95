"""The collector's full passes stay off the request path: what a load built is frozen, an unload thaws."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from mlserver_torchflow.config import ServerSettings
from mlserver_torchflow.serving import heap


class Node:
    """A reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settle_freezes_what_exists_and_release_makes_it_collectable_again() -> None:
    model = Node()
    gone = weakref.ref(model)
    heap.settle(True)
    assert gc.get_freeze_count() > 0
    del model
    gc.collect()
    assert gone() is not None, "a frozen cycle is never scanned"
    heap.release(True)
    assert gone() is None, "an unload's release collects what only the old model used"
    assert gc.get_freeze_count() > 0, "and the rest is frozen again"


def test_off_leaves_the_collector_alone() -> None:
    heap.settle(False)
    assert gc.get_freeze_count() == 0
    cycle = Node()
    gone = weakref.ref(cycle)
    del cycle
    heap.release(False)
    gc.collect()
    assert gone() is None


def test_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().gc_freeze
    monkeypatch.setenv("MLSERVER_TORCHFLOW_GC_FREEZE", "false")
    assert not ServerSettings().gc_freeze
