"""Forms micro-batches: requests of one group (priority, model, sampling parameters) wait together
for a short while so that a worker gets one batch instead of many single requests.

A batch closes, and goes to the dispatcher, as soon as any of these holds:

- it has `max_size` requests;
- one more request would take its summed `max_new_tokens` past `token_budget` (the new request
  opens the next batch; a request alone over the budget still forms its own batch);
- its first request has waited `max_wait_s` (so a lone request is delayed at most that long);
- the caller flushes it: no credit is left (nothing more could join), or a worker of its model
  has a free slot (the batch would start at once; waiting to fill it would only add latency, and
  the workers batch continuously anyway). So batches are held only while the workers are busy,
  which is when fuller batches pay off.

Everything held here counts against the batcher's credits (the requests are taken), so the former
never grows beyond what the credits allow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from services.batcher.request_state import RequestState
from shared.records import Priority

__all__ = ["PRIORITY_RANK", "BatchFormer"]

#: Lower is served first.
PRIORITY_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}

GroupKey = tuple[object, ...]


@dataclass
class _Forming:
    opened_at: float
    states: list[RequestState] = field(default_factory=list)
    tokens: int = 0


class BatchFormer:
    """Open micro-batches by group; see the module docstring for when one closes."""

    def __init__(
        self, *, max_size: int, token_budget: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_size = max_size
        self.token_budget = token_budget
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._open: dict[GroupKey, _Forming] = {}

    def __len__(self) -> int:
        """Requests held in open batches."""
        return sum(len(f.states) for f in self._open.values())

    @staticmethod
    def group_of(state: RequestState) -> GroupKey:
        return (PRIORITY_RANK[state.priority], state.request.model, state.request.params.group_key())

    def add(self, state: RequestState) -> list[list[RequestState]]:
        """Put `state` into its group's open batch; returns the batches this closed (by size/budget)."""
        key = self.group_of(state)
        need = state.request.params.max_new_tokens
        closed: list[list[RequestState]] = []
        forming = self._open.get(key)
        if forming is not None and forming.tokens + need > self.token_budget:
            closed.append(self._open.pop(key).states)
            forming = None
        if forming is None:
            forming = self._open[key] = _Forming(opened_at=self._clock())
        forming.states.append(state)
        forming.tokens += need
        if len(forming.states) >= self.max_size:
            closed.append(self._open.pop(key).states)
        return closed

    def due(self, *, flush: bool = False, flush_models: frozenset[str] | set[str] = frozenset()) -> list[list[RequestState]]:
        """Close the batches whose wait is over (all of them with `flush`, and those of the models
        in `flush_models`), highest priority first."""
        now = self._clock()
        keys = [
            k for k, f in self._open.items()
            if flush or k[1] in flush_models or now - f.opened_at >= self.max_wait_s
        ]
        keys.sort(key=lambda k: (k[0], self._open[k].opened_at))
        return [self._open.pop(k).states for k in keys]

    def next_due_in(self) -> float | None:
        """Seconds until the oldest open batch must close; None when nothing is open."""
        if not self._open:
            return None
        oldest = min(f.opened_at for f in self._open.values())
        return max(0.0, oldest + self.max_wait_s - self._clock())
