"""Keeps the objects a service builds while starting out of the garbage collector's full passes.

A full (generation 2) collection walks every tracked object. A started service holds hundreds of
thousands of long-lived ones (modules, FastAPI routes, pydantic validators, models) that will
never be garbage, and under steady load the collector made such a pass every few seconds: in the
gateway at 57 requests/s, 136-334 ms each, every 7-8 s, and the requests in flight at that moment
waited that long (the tail of load-tests/pipeline_bench.py's priority-isolation phase).
`gc.freeze()` moves every object alive into a permanent generation that collections skip;
objects made later are collected as before. CPython's documentation recommends the same for
servers that fork workers after loading.

The youngest generation is then collected every `YOUNG_THRESHOLD` allocations instead of 700: a
request's objects live for milliseconds to seconds, and at 700 many of those still in flight were
promoted to the old generations, which then needed full collections over a backlog of waiting
requests (72-137 ms each in the gateway, under a 3x overload, even after the freeze). Measured in
the isolation phase (2 alternating rounds): high-priority TTFT p99 39 / 37 ms against 101 / 117 ms
with the freeze alone; throughput within noise (one round: 950 / 1,196 against 1,013 / 1,008
requests/s at 64 / 256 clients).
"""

from __future__ import annotations

import gc
import logging

__all__ = ["OLDER_THRESHOLDS", "YOUNG_THRESHOLD", "freeze_startup_heap"]

#: Allocations (minus deallocations) between collections of the youngest generation (CPython: 700).
YOUNG_THRESHOLD = 50_000
#: Collections of a generation between collections of the next one (CPython: 10, 10).
OLDER_THRESHOLDS = (20, 20)

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect start-up garbage, freeze what is alive and set the thresholds above; returns how
    many objects are frozen. Call it once a service has started (its models, apps and clients
    exist)."""
    # The garbage first: a frozen object is never collected, even after it becomes garbage.
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    frozen = gc.get_freeze_count()
    log.info("start-up objects frozen out of garbage collection", extra={"objects": frozen})
    return frozen
