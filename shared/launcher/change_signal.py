"""A wake-up call that is never lost: waiters block until something changed since they looked.

The launcher's waits (readiness rounds, `lgc up` idling until a signal or a child's death, staged
stops) all block on one of these instead of sleeping in a loop. A plain ``threading.Event`` that
several waiters clear can lose a wake-up; a change counter cannot.
"""

from __future__ import annotations

import threading

__all__ = ["ChangeSignal"]


class ChangeSignal:
    """A counter of changes under a condition variable.

    `notify()` may be called from any thread, but not from a Python signal handler: a handler
    that interrupts a waiter after it checked the count and before it slept would lose its
    wake-up (`shared.launcher.foreground` relays signals through a thread instead).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def snapshot(self) -> int:
        """The current change count; pass it to `wait` to wait for anything newer."""
        with self._cond:
            return self._generation

    def notify(self) -> None:
        """Record a change and wake every waiter."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout_s: float | None = None) -> bool:
        """Block until something changed after `seen` (True) or the timeout passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != seen, timeout_s)
