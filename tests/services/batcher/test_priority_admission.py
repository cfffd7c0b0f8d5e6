"""PriorityAdmission: credit shares, strict order while higher levels have backlog, aging."""

from __future__ import annotations

from services.batcher.priority_admission import PriorityAdmission
from shared.records import Priority

H, N, L = Priority.HIGH, Priority.NORMAL, Priority.LOW
NONE = {H: 0, N: 0, L: 0}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _admission(clock: FakeClock | None = None, aging_s: float = 5.0) -> PriorityAdmission:
    return PriorityAdmission(normal_share=0.75, low_share=0.5, aging_s=aging_s, clock=clock or FakeClock())


def test_without_high_traffic_every_level_may_use_every_credit() -> None:
    plan = _admission().plan(credit=16, total=16, inflight=NONE, backlog={H: False, N: False, L: False}, batch_size=4)
    assert [(lv.priority, lv.allowance) for lv in plan.levels] == [(H, 16), (N, 16), (L, 16)]
    assert not plan.uncertain


def test_high_backlog_holds_back_normal_and_low() -> None:
    plan = _admission().plan(credit=16, total=16, inflight=NONE, backlog={H: True, N: True, L: True}, batch_size=4)
    assert [lv.priority for lv in plan.levels] == [H]
    assert not plan.uncertain


def test_unknown_higher_backlog_holds_back_but_asks_for_a_quick_replan() -> None:
    plan = _admission().plan(credit=16, total=16, inflight=NONE, backlog={H: False, N: None, L: True}, batch_size=4)
    assert [lv.priority for lv in plan.levels] == [H, N]
    assert plan.uncertain


def test_while_high_traffic_is_active_shares_keep_headroom_for_high() -> None:
    clock = FakeClock()
    admission = _admission(clock)
    admission.took(H, 1)
    assert admission.high_active()
    plan = admission.plan(credit=8, total=16, inflight={H: 0, N: 0, L: 8}, backlog={H: False, N: False, L: True}, batch_size=4)
    # low used its half; normal and low together may hold 12, so normal may add 4.
    assert [(lv.priority, lv.allowance) for lv in plan.levels] == [(H, 8), (N, 4)]
    plan = admission.plan(credit=1, total=1, inflight=NONE, backlog={H: False, N: False, L: True}, batch_size=4)
    assert plan.allows(L)  # never less than one credit per level
    clock.now = 10.0  # high went quiet: the shares lapse
    assert not admission.high_active()
    plan = admission.plan(credit=8, total=16, inflight={H: 0, N: 0, L: 8}, backlog={H: False, N: False, L: True}, batch_size=4)
    assert [(lv.priority, lv.allowance) for lv in plan.levels] == [(H, 8), (N, 8), (L, 8)]


def test_a_waiting_level_ages_and_goes_first_once() -> None:
    clock = FakeClock()
    admission = _admission(clock, aging_s=5.0)
    busy = {H: True, N: False, L: True}
    assert [lv.priority for lv in admission.plan(credit=4, total=16, inflight={H: 12, N: 0, L: 0}, backlog=busy, batch_size=2).levels] == [H]
    clock.now = 4.9
    assert not admission.plan(credit=4, total=16, inflight={H: 12, N: 0, L: 0}, backlog=busy, batch_size=2).allows(L)
    assert admission.waiting_s(L) == 4.9
    clock.now = 5.0
    plan = admission.plan(credit=4, total=16, inflight={H: 12, N: 0, L: 0}, backlog=busy, batch_size=2)
    assert plan.levels[0].priority is L and plan.levels[0].aged
    admission.took(L, 2)
    assert admission.waiting_s(L) == 0
    assert not admission.plan(credit=4, total=16, inflight={H: 12, N: 0, L: 2}, backlog=busy, batch_size=2).allows(L)


def test_waiting_without_credit_also_ages() -> None:
    clock = FakeClock()
    admission = _admission(clock, aging_s=1.0)
    assert admission.plan(credit=0, total=16, inflight={H: 16, N: 0, L: 0}, backlog={H: True, N: False, L: None}, batch_size=4).levels == []
    clock.now = 2.0
    plan = admission.plan(credit=1, total=16, inflight={H: 15, N: 0, L: 0}, backlog={H: True, N: False, L: None}, batch_size=4)
    assert [(lv.priority, lv.allowance, lv.aged) for lv in plan.levels][0] == (L, 1, True)


def test_a_level_with_nothing_waiting_does_not_age() -> None:
    clock = FakeClock()
    admission = _admission(clock, aging_s=1.0)
    admission.plan(credit=4, total=16, inflight=NONE, backlog={H: True, N: False, L: False}, batch_size=4)
    clock.now = 10
    assert admission.waiting_s(L) == 0 and admission.waiting_s(N) == 0
