"""Decides, before every fetch, which priority levels may take records from Kafka and how many.

The rule (documented in README.md):

1. **Credits** (requests this batcher may hold) are shared by the levels, but not equally, while
   high-priority traffic is active (a high request was taken in the last `high_active_s`): high
   may use all of them, normal and low *together* at most `normal_share` of the total, and low at
   most `low_share` (never less than one credit each). What the lower levels may not use is
   headroom: with the default shares (below one worker slot per credit pair) some worker slots
   stay free for high requests, which therefore start at once instead of queueing on a worker
   behind lower work (workers serve their queue in arrival order). Without high traffic every
   level may use every credit, so no capacity is held back for nobody.
2. **Strict order while there is backlog:** a level may take records only while every higher
   level has no known backlog (records in Kafka it has not taken). A higher level that is paused
   has an unknown backlog and blocks the lower ones too.
3. **Aging:** a level kept waiting (rule 2, or no credit at all) for `aging_s` is *aged*: it may
   take one micro-batch (`batch_size` records) ahead of every higher level, after which its
   clock restarts. So under a permanent stream of high requests, low still gets a batch every
   `aging_s`. An aged level stays resumed even without credit (its records wait in the client's
   bounded buffer), and the service gives it a short exclusive fetch when that buffer is empty.

Levels that may not take records are paused on the consumer by the service (their backlog stays
in Kafka, not in memory). High is never paused for lack of credit: the client buffers at most one
fetch response per partition, so its backlog is always known and a freed credit goes to it at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shared.records import Priority

__all__ = ["LEVELS", "Admission", "LevelPlan", "PriorityAdmission"]

#: Priority levels, highest first.
LEVELS = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


@dataclass(frozen=True)
class LevelPlan:
    """One level allowed to take records now."""

    priority: Priority
    allowance: int
    """Most records it may take in this round."""
    aged: bool
    """Served ahead of the higher levels because it waited `aging_s`."""


@dataclass(frozen=True)
class Admission:
    """The outcome of one planning round."""

    levels: list[LevelPlan]
    """Levels that may take records, in the order they are served (aged first, then by priority)."""
    uncertain: bool
    """A level is held back only because a higher one's backlog is unknown (it was just resumed):
    the caller should re-plan soon instead of blocking long on a fetch."""
    aged: frozenset[Priority] = frozenset()
    """Levels aged now, credit or not: the caller keeps their partitions resumed so that their
    records are in the client's buffer when the next credit frees."""

    def allows(self, priority: Priority) -> bool:
        return any(level.priority is priority for level in self.levels)


class PriorityAdmission:
    """Tracks how long each level has waited and plans each fetch round."""

    def __init__(
        self,
        *,
        normal_share: float,
        low_share: float,
        aging_s: float,
        high_active_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shares = {Priority.HIGH: 1.0, Priority.NORMAL: normal_share, Priority.LOW: low_share}
        self.aging_s = aging_s
        self.high_active_s = high_active_s
        self._last_high: float | None = None
        self._clock = clock
        self._waiting_since: dict[Priority, float | None] = {p: None for p in LEVELS}

    def plan(
        self,
        *,
        credit: int,
        total: int,
        inflight: Mapping[Priority, int],
        backlog: Mapping[Priority, bool | None],
        batch_size: int,
    ) -> Admission:
        """Plan one round.

        credit: requests this batcher may still take; total: credits when nothing is in flight;
        inflight: requests held per level; backlog: per level True (records waiting in Kafka),
        False (none) or None (unknown: paused, or not fetched yet)."""
        now = self._clock()
        shares_apply = self.high_active(now)
        # Requests held by each level and every level below it (shares are cumulative).
        below = {Priority.LOW: inflight.get(Priority.LOW, 0)}
        below[Priority.NORMAL] = below[Priority.LOW] + inflight.get(Priority.NORMAL, 0)
        below[Priority.HIGH] = below[Priority.NORMAL] + inflight.get(Priority.HIGH, 0)
        levels: list[LevelPlan] = []
        higher_blocks = False  # a higher level has (or may have) backlog
        higher_unknown_only = True
        uncertain = False
        for priority in LEVELS:
            # At least one credit per level, or a small cluster (total 1) would never serve low.
            if shares_apply:
                share_left = max(1, math.floor(self.shares[priority] * total)) - below[priority]
                allowance = max(0, min(credit, share_left))
            else:
                allowance = credit
            since = self._waiting_since[priority]
            aged = since is not None and now - since >= self.aging_s
            if aged:
                allowance = max(allowance, min(credit, batch_size))
            if allowance > 0 and (aged or not higher_blocks):
                levels.append(LevelPlan(priority, allowance, aged))
                if backlog.get(priority) is False:
                    self._waiting_since[priority] = None  # nothing of it is waiting
            else:
                if higher_blocks and allowance > 0 and higher_unknown_only:
                    uncertain = True
                # High never ages: nothing is ahead of it, it only waits for credit like everyone.
                waits = priority is not Priority.HIGH and backlog.get(priority) is not False
                if since is None and waits and (higher_blocks or credit == 0):
                    self._waiting_since[priority] = now
            level_backlog = backlog.get(priority)
            if level_backlog is not False:
                higher_blocks = True
                if level_backlog is True:
                    higher_unknown_only = False
        levels.sort(key=lambda lv: (not lv.aged, LEVELS.index(lv.priority)))
        aged_now = frozenset(
            p for p, since in self._waiting_since.items() if since is not None and now - since >= self.aging_s
        )
        return Admission(levels, uncertain, aged_now)

    def took(self, priority: Priority, records: int) -> None:
        """`records` of `priority` were taken: its wait (if any) is over."""
        if records > 0:
            self._waiting_since[priority] = None
            if priority is Priority.HIGH:
                self._last_high = self._clock()

    def high_active(self, now: float | None = None) -> bool:
        """Whether a high request was taken within `high_active_s` (the shares apply then)."""
        if self._last_high is None:
            return False
        return (self._clock() if now is None else now) - self._last_high < self.high_active_s

    def waiting_s(self, priority: Priority) -> float:
        """How long `priority` has been kept waiting (0 if it is not)."""
        since = self._waiting_since[priority]
        return 0.0 if since is None else self._clock() - since
