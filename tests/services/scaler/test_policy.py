"""UtilizationPolicy on recorded load series (pure: no broker, no clock)."""

from __future__ import annotations

import pytest

from services.scaler.policy import UtilizationPolicy, WorkerLoad


def _fleet(*loads: tuple[float, float], capacity: float | None = 8) -> list[WorkerLoad]:
    return [WorkerLoad(f"worker-{i}", running, waiting, capacity) for i, (running, waiting) in enumerate(loads)]


#: A recorded day in the life of a cluster: (fleet at the tick, expected desired, expected action).
#: Capacity 8 at a target of 80 % means 6.4 sequences per worker.
SERIES = [
    (_fleet((0, 0)), 1, "hold"),  # idle: stay at the minimum
    (_fleet((8, 4)), 2, "scale_up"),  # 12 / 6.4 = 1.9
    (_fleet((8, 5), (8, 5)), 5, "scale_up"),  # 26 / 6.4 = 4.06
    (_fleet(*[(8, 6)] * 5), 8, "scale_up"),  # 70 / 6.4 = 10.9, clamped to the maximum 8
    (_fleet(*[(8, 30)] * 8), 8, "hold"),  # still overloaded but already at the maximum
    (_fleet(*[(1, 0)] * 8, (2, 0)), 2, "scale_down"),  # 10 / 6.4 = 1.56 (9 reported: one extra)
    (_fleet((0, 0), (0, 0)), 1, "scale_down"),  # idle again
]


def test_a_recorded_series_gives_the_expected_decisions() -> None:
    policy = UtilizationPolicy(min_replicas=1, max_replicas=8, target_utilization=0.8)
    got = [(d.desired, d.action) for d in map(policy.decide, (fleet for fleet, _, _ in SERIES))]
    assert got == [(desired, action) for _, desired, action in SERIES]


def test_the_decision_explains_itself() -> None:
    decision = UtilizationPolicy(max_replicas=3).decide(_fleet(*[(8, 6)] * 2))
    assert decision.current == 2 and decision.desired == 3 and decision.action == "scale_up"
    assert decision.signals["running"] == 16 and decision.signals["waiting"] == 12
    assert decision.signals["needed"] == 5 and decision.signals["utilization"] == pytest.approx(28 / 16)
    assert "needs 5, clamped to [1, 3] -> 3" in decision.reason


def test_no_workers_means_the_minimum() -> None:
    assert UtilizationPolicy(min_replicas=2).decide([]).desired == 2
    decision = UtilizationPolicy(min_replicas=0).decide([])
    assert (decision.current, decision.desired, decision.action) == (0, 0, "hold")


def test_capacity_defaults_when_workers_do_not_report_it() -> None:
    policy = UtilizationPolicy(target_utilization=1.0, default_capacity=4, max_replicas=100)
    assert policy.decide(_fleet((12, 0), capacity=None)).desired == 3


def test_float_rounding_does_not_add_a_replica() -> None:
    # 16 / (10 * 0.8) is 2.0000000000000004 in floating point; it must still be 2.
    policy = UtilizationPolicy(target_utilization=0.8)
    assert policy.decide(_fleet((16, 0), capacity=10)).desired == 2


@pytest.mark.parametrize(
    "kwargs", [dict(min_replicas=3, max_replicas=2), dict(target_utilization=0), dict(default_capacity=0)]
)
def test_bad_policy_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        UtilizationPolicy(**kwargs)
