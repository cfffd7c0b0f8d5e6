"""ScalingPolicy on recorded load series (pure: no broker, no clock; time is an argument).

Each series is replayed tick by tick with a perfect actuator (the next tick's current count is the
previous decision's desired count), as the decision loop would see it."""

from __future__ import annotations

import pytest

from services.scaler.policy import FleetSignals, PolicyConfig, ScalingPolicy, WorkerLoad

CAPACITY = 8.0  # sequences per worker; at a target of 0.8 one worker carries 6.4


def _signals(current: int, demand: float, lag: float | None = 0.0, failed_per_s: float = 0.0) -> FleetSignals:
    """`current` workers sharing `demand` sequences (all running) and `lag` records of lag."""
    share = demand / current if current else 0.0
    workers = tuple(
        WorkerLoad(f"worker-{i}", share, 0.0, CAPACITY, finished_per_s=1.0, failed_per_s=failed_per_s)
        for i in range(current)
    )
    return FleetSignals(current=current, workers=workers, lag=lag, lag_by_priority={"normal": lag or 0.0})


def _replay(policy: ScalingPolicy, demands: list[float], *, interval_s: float = 5.0, start: int = 1,
            lags: list[float] | None = None) -> list[int]:
    """Desired count at each tick of a demand series (and optional lag series)."""
    current, out = start, []
    for i, demand in enumerate(demands):
        lag = lags[i] if lags is not None else 0.0
        decision = policy.decide(_signals(current, demand, lag), now=1_000.0 + i * interval_s)
        out.append(decision.desired)
        current = decision.desired
    return out


def _policy(**overrides) -> ScalingPolicy:
    base = dict(min_replicas=1, max_replicas=10, target_utilization=0.8, default_capacity=CAPACITY,
                lag_target_per_replica=1_000.0, prediction_horizon_s=0.0, scale_up_window_s=15.0,
                scale_down_window_s=60.0, scale_up_max_step=4, scale_down_max_step=1)
    return ScalingPolicy(PolicyConfig(**{**base, **overrides}))


def _flips(desired: list[int]) -> int:
    """How often the direction of change reverses (up then down, or down then up)."""
    moves = [b - a for a, b in zip(desired, desired[1:]) if b != a]
    return sum(1 for a, b in zip(moves, moves[1:]) if (a > 0) != (b > 0))


def test_step_scales_up_within_the_up_window_and_by_at_most_the_step() -> None:
    # 2 sequences for 4 ticks, then 40 (40 / 6.4 = 6.25 -> 7 workers).
    desired = _replay(_policy(), [2.0] * 4 + [40.0] * 8)
    assert desired[:4] == [1, 1, 1, 1]
    # The step is at tick 4; the 15 s window (3 ticks of 5 s) must see it throughout: tick 7.
    assert desired[4:7] == [1, 1, 1], "scaled up before the load lasted a whole window"
    assert desired[7] == 5, "not scaled up within the window, or by more than the step limit of 4"
    assert desired[8] == 7 and desired[-1] == 7


def test_step_with_a_zero_up_window_scales_up_at_once() -> None:
    desired = _replay(_policy(scale_up_window_s=0.0, scale_up_max_step=10), [2.0, 40.0, 40.0])
    assert desired == [1, 7, 7]


def test_ramp_prediction_scales_ahead_of_the_load() -> None:
    ramp = [float(i) for i in range(0, 60, 2)]  # +2 sequences per 5 s tick
    plain = _replay(_policy(scale_up_window_s=0.0), ramp)
    predicted = _replay(_policy(scale_up_window_s=0.0, prediction_horizon_s=30.0, trend_window_s=60.0), ramp)
    assert all(p >= q for p, q in zip(predicted, plain))
    assert sum(predicted) > sum(plain), "the rising trend did not raise any decision"
    # Plain utilization follows the load: ceil(58 / 6.4) = 10 at the end.
    assert plain[-1] == 10


def test_a_falling_trend_never_lowers_the_need() -> None:
    fall = [float(x) for x in range(60, 0, -4)]
    with_prediction = _replay(_policy(prediction_horizon_s=60.0, scale_down_window_s=0.0), fall, start=10)
    without = _replay(_policy(prediction_horizon_s=0.0, scale_down_window_s=0.0), fall, start=10)
    assert with_prediction == without


def test_a_short_spike_is_filtered_by_the_up_window_and_a_long_one_is_held_by_the_down_window() -> None:
    spike = [2.0] * 3 + [60.0] + [2.0] * 6
    assert _replay(_policy(), spike) == [1] * 10, "a one-tick spike scaled up despite the 15 s window"

    # With no up window the spike scales up at once; the down window (60 s = 12 ticks) then holds
    # the count, and scaling down goes one replica per decision.
    desired = _replay(_policy(scale_up_window_s=0.0), [2.0] * 3 + [60.0] + [2.0] * 20)
    assert desired[3] == 5  # 1 + step 4
    assert desired[4:16] == [5] * 12, "scaled down inside the down window"
    assert desired[16:21] == [4, 3, 2, 1, 1]


def test_oscillating_load_does_not_flap() -> None:
    # 10 s high, 10 s low, for 10 minutes.
    wave = ([40.0] * 2 + [4.0] * 2) * 30
    desired = _replay(_policy(scale_up_window_s=0.0), wave)
    assert _flips(desired) == 0, f"flapped: {desired}"
    assert max(desired) == 7 and desired[-1] == 7  # sized for the peaks, held through the troughs


def test_oscillation_with_an_up_window_longer_than_a_peak_stays_put() -> None:
    wave = ([40.0] * 2 + [4.0] * 2) * 30
    desired = _replay(_policy(scale_up_window_s=15.0), wave)
    assert set(desired) == {1}, "peaks shorter than the up window must not scale up"


def test_min_and_max_replicas_are_respected() -> None:
    idle = _replay(_policy(min_replicas=2, scale_down_window_s=0.0), [0.0] * 10, start=5)
    assert min(idle) == 2 and idle[-1] == 2
    flood = _replay(_policy(max_replicas=6, scale_up_window_s=0.0), [500.0] * 5)
    assert max(flood) == 6 and flood[-1] == 6


def test_step_limits_bound_every_change() -> None:
    series = [0.0] * 2 + [500.0] * 6 + [0.0] * 30
    desired = _replay(_policy(max_replicas=10, scale_up_window_s=0.0, scale_down_window_s=0.0,
                              scale_up_max_step=3, scale_down_max_step=2), series)
    changes = [b - a for a, b in zip([1, *desired], desired)]
    assert max(changes) == 3 and min(changes) == -2
    assert max(desired) == 10 and desired[-1] == 1


def test_lag_drives_replicas_as_keda_does() -> None:
    policy = _policy(lag_target_per_replica=10.0, scale_up_window_s=0.0, scale_up_max_step=10, max_replicas=20)
    decision = policy.decide(_signals(1, demand=2.0, lag=95.0), now=0.0)
    assert decision.desired == 10  # ceil(95 / 10), far above what utilization (2 / 6.4) asks
    assert decision.signals["lag_replicas"] == pytest.approx(9.5)
    assert "consumer lag 95" in decision.reason


def test_scale_to_zero_when_idle_and_activation_threshold_to_wake() -> None:
    policy = _policy(scale_to_zero=True, activation_threshold=3.0, scale_up_window_s=0.0,
                     scale_down_window_s=10.0, lag_target_per_replica=4.0)
    current, now, desired = 2, 0.0, []
    for _ in range(8):  # idle: down to zero after the 10 s window, one replica per decision
        current = policy.decide(_signals(current, 0.0, lag=0.0), now).desired
        desired.append(current)
        now += 5.0
    assert desired[-1] == 0 and min(desired[:2]) == 2
    below = policy.decide(_signals(0, 0.0, lag=2.0), now)
    assert below.desired == 0 and "activation threshold" in below.reason
    woken = policy.decide(_signals(0, 0.0, lag=6.0), now + 5.0)
    assert (woken.desired, woken.action) == (2, "scale_up")  # ceil(6 / 4)


def test_without_scale_to_zero_min_zero_still_needs_demand_to_be_zero() -> None:
    policy = _policy(min_replicas=0, scale_up_window_s=0.0, scale_down_window_s=0.0)
    assert policy.decide(_signals(1, 0.0), now=0.0).desired == 0
    assert policy.decide(_signals(0, 0.0, lag=3.0), now=5.0).desired == 1


def test_a_high_error_rate_blocks_scaling_down() -> None:
    policy = _policy(scale_down_window_s=0.0, error_rate_threshold=0.2)
    decision = policy.decide(_signals(4, 1.0, failed_per_s=1.0), now=0.0)  # 50 % failing
    assert decision.desired == 4 and decision.action == "hold"
    assert "not scaling down while workers fail" in decision.reason
    assert decision.signals["error_rate"] == pytest.approx(0.5)


def test_a_fresh_policy_waits_a_whole_down_window_before_scaling_down() -> None:
    policy = _policy(scale_down_window_s=60.0)
    assert policy.decide(_signals(3, 0.0), now=0.0).desired == 3
    assert policy.decide(_signals(3, 0.0), now=55.0).desired == 3
    assert policy.decide(_signals(3, 0.0), now=65.0).desired == 2


def test_the_decision_explains_itself_with_its_signals() -> None:
    policy = _policy(max_replicas=3, scale_up_window_s=0.0)
    decision = policy.decide(_signals(2, 28.0, lag=None), now=0.0)
    assert decision.current == 2 and decision.desired == 3 and decision.action == "scale_up"
    assert decision.signals["running"] == 28 and decision.signals["needed"] == 5
    assert decision.signals["utilization"] == pytest.approx(28 / 16)
    assert decision.signals["lag"] == -1.0
    assert "needs 5, clamped to [1, 3] -> 3" in decision.reason
    assert "consumer lag unknown" in decision.reason and "current 2 -> desired 3 (scale_up)" in decision.reason


def test_float_rounding_does_not_add_a_replica() -> None:
    policy = ScalingPolicy(PolicyConfig(target_utilization=0.8, scale_up_window_s=0.0))
    workers = (WorkerLoad("w", 16.0, 0.0, 10.0),)
    assert policy.decide(FleetSignals(current=2, workers=workers, lag=0.0), now=0.0).desired == 2


def test_capacity_defaults_when_workers_do_not_report_it() -> None:
    policy = ScalingPolicy(PolicyConfig(target_utilization=1.0, default_capacity=4, max_replicas=100))
    workers = (WorkerLoad("w", 12.0, 0.0, None),)
    assert policy.decide(FleetSignals(current=3, workers=workers), now=0.0).desired == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_replicas=3, max_replicas=2),
        dict(target_utilization=0),
        dict(default_capacity=0),
        dict(lag_target_per_replica=0),
        dict(scale_down_window_s=-1),
        dict(scale_up_max_step=0),
        dict(error_rate_threshold=2),
    ],
)
def test_bad_policy_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PolicyConfig(**kwargs)
