"""Keeps the objects a service builds while starting out of the garbage collector's full passes.

A full (generation 2) collection walks every tracked object. A started service holds hundreds of
thousands of long-lived ones (modules, FastAPI routes, pydantic validators, models) that will
never be garbage, and under steady load the collector made such a pass every few seconds: in the
gateway at 57 requests/s, 136-334 ms each, every 7-8 s, and the requests in flight at that moment
waited that long (the tail of load-tests/pipeline_bench.py's priority-isolation phase).
`gc.freeze()` moves every object alive into a permanent generation that collections skip;
objects made later are collected as before. CPython's documentation recommends the same for
servers that fork workers after loading.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["freeze_startup_heap"]

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect start-up garbage, then freeze what is alive; returns how many objects are frozen.
    Call it once a service has started (its models, apps and clients exist)."""
    # The garbage first: a frozen object is never collected, even after it becomes garbage.
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up objects frozen out of garbage collection", extra={"objects": frozen})
    return frozen
