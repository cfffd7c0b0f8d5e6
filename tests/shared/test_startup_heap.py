"""shared/startup_heap.py: what is alive at start-up leaves the collector's generations, later
objects are still collected, and the thresholds are set."""

from __future__ import annotations

import gc
import weakref

from shared.startup_heap import OLDER_THRESHOLDS, YOUNG_THRESHOLD, freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_start_up_objects_are_frozen_and_later_garbage_is_still_collected() -> None:
    kept = _Node()
    thresholds = gc.get_threshold()
    try:
        frozen = freeze_startup_heap()
        # A frozen object freed since (an evicted cache entry, another thread's garbage) leaves
        # the permanent generation, so the count can only have fallen a little.
        assert frozen > 0 and frozen - 100 < gc.get_freeze_count() <= frozen
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
        assert all(not any(o is kept for o in gc.get_objects(generation)) for generation in range(3))

        later = _Node()
        ref = weakref.ref(later)
        del later
        gc.collect()
        assert ref() is None  # made after the freeze: collected as before
    finally:
        gc.unfreeze()  # the rest of the test session keeps the ordinary collector
        gc.set_threshold(*thresholds)
