"""Runs a service's main coroutine on the configured event loop (`LGC_EVENT_LOOP`).

Every service spends most of its CPU in the event loop's socket paths: Kafka requests, gRPC
streams, HTTP. uvloop (libuv, the loop `uvicorn[standard]` picks) does that work in C; the
standard library loop does it in Python. The choice is made here, once, for every entry point,
instead of a policy set at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["run"]

T = TypeVar("T")


def _loop_factory(kind: Literal["uvloop", "asyncio"]) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415 - imported only when chosen, so `asyncio` works without it

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: Literal["uvloop", "asyncio"]) -> T:
    """`asyncio.run(main)` on a loop of the given kind."""
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        return runner.run(main)
