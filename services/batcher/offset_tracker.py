"""Which offsets of a partition may be committed.

A partition's records finish out of order (a short request overtakes a long one), but its committed
offset may only move past a record once that record's final reply is published: the committed
offset is the lowest offset still in flight (or one past the highest finished one when nothing is).
After a crash, everything from there is replayed; replies already sent are dropped downstream as
duplicates by request id.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aiokafka import TopicPartition

__all__ = ["OffsetTracker"]


@dataclass
class _PartitionState:
    pending: deque[int] = field(default_factory=deque)  # offsets taken, ascending
    finished: set[int] = field(default_factory=set)  # finished offsets still behind a pending one
    committable: int | None = None  # next offset to commit (one past the last finished prefix)
    committed: int | None = None  # last offset committed


class OffsetTracker:
    """Tracks taken and finished offsets per partition."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}

    def taken(self, tp: TopicPartition, offset: int) -> None:
        """A record was taken from Kafka; offsets of one partition arrive in ascending order."""
        state = self._parts.setdefault(tp, _PartitionState())
        if state.pending and offset <= state.pending[-1]:
            raise ValueError(f"offset {offset} of {tp} taken out of order (last {state.pending[-1]})")
        state.pending.append(offset)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        """A record's final reply (or dead-letter) is published."""
        state = self._parts.get(tp)
        if state is None or (offset not in state.pending):
            # Safe to ignore: the partition was revoked (and forgotten) while this request ran;
            # its new owner replays it and the duplicate is dropped downstream.
            return
        state.finished.add(offset)
        while state.pending and state.pending[0] in state.finished:
            done = state.pending.popleft()
            state.finished.discard(done)
            state.committable = done + 1

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        """Records taken and not finished, in one partition or all."""
        if tp is None:
            parts = list(self._parts.values())
        else:
            parts = [self._parts[tp]] if tp in self._parts else []
        return sum(len(p.pending) - len(p.finished) for p in parts)

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Offsets to commit now: partitions whose committable offset moved since the last commit."""
        return {
            tp: state.committable
            for tp, state in self._parts.items()
            if state.committable is not None and state.committable != state.committed
        }

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record a successful commit (a failed one is simply offered again next time)."""
        for tp, offset in offsets.items():
            state = self._parts.get(tp)
            if state is not None:
                state.committed = offset

    def forget(self, partitions: set[TopicPartition] | list[TopicPartition]) -> None:
        """Drop revoked partitions: their records will be replayed by their new owner."""
        for tp in partitions:
            self._parts.pop(tp, None)
