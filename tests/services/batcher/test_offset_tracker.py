"""The committed offset never passes a request whose final reply is not out."""

import pytest
from aiokafka import TopicPartition

from services.batcher.offset_tracker import OffsetTracker

TP = TopicPartition("lgc.requests.normal", 0)
TP2 = TopicPartition("lgc.requests.normal", 1)


def test_commits_only_the_finished_prefix() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.taken(TP, offset)
    t.finished(TP, 11)  # out of order: 10 still runs
    assert t.commit_offsets() == {}
    t.finished(TP, 10)
    assert t.commit_offsets() == {TP: 12}  # 10 and 11 done, 12 still running
    t.mark_committed({TP: 12})
    assert t.commit_offsets() == {}
    t.finished(TP, 12)
    assert t.commit_offsets() == {TP: 13}
    assert t.in_flight() == 0


def test_partitions_are_independent_and_counted() -> None:
    t = OffsetTracker()
    t.taken(TP, 0)
    t.taken(TP2, 5)
    t.taken(TP2, 6)
    t.finished(TP2, 6)
    assert t.in_flight() == 2
    assert t.in_flight(TP2) == 1
    assert t.commit_offsets() == {}
    t.finished(TP2, 5)
    assert t.commit_offsets() == {TP2: 7}


def test_failed_commit_is_offered_again() -> None:
    t = OffsetTracker()
    t.taken(TP, 0)
    t.finished(TP, 0)
    assert t.commit_offsets() == {TP: 1}
    # no mark_committed: the commit failed
    assert t.commit_offsets() == {TP: 1}


def test_forgotten_partition_ignores_late_finishes() -> None:
    t = OffsetTracker()
    t.taken(TP, 3)
    t.forget([TP])
    t.finished(TP, 3)  # a request that outlived its partition's revocation
    assert t.commit_offsets() == {}
    assert t.in_flight() == 0


def test_out_of_order_take_is_refused() -> None:
    t = OffsetTracker()
    t.taken(TP, 5)
    with pytest.raises(ValueError):
        t.taken(TP, 4)
