"""The scaling policy: a deterministic function of the signals it is given and of its own recent
history, with no I/O and no clock (time is an argument), so tests and the trace benchmark replay
recorded series through it.

One decision, in order:

1. **Load in replicas, from each signal** (the largest wins, as the Kubernetes HPA does with
   several metrics):
   * utilization: `(running + waiting) / (capacity_per_worker * target_utilization)`;
   * consumer lag, as KEDA's Kafka scaler: `lag / lag_target_per_replica`.
2. **Trend and prediction:** the least-squares slope of that load over the last `trend_window_s`
   is extrapolated `prediction_horizon_s` ahead; a rising trend raises the need early (a falling
   one never lowers it: scaling down waits for the load itself to fall). No trend until the
   history spans half the window; a prediction at most doubles the load.
   `needed = ceil(max(load, predicted))`.
3. **Bounds:** clamped to `[min_replicas, max_replicas]`; with `scale_to_zero`, an idle fleet
   (no sequences, no lag) needs 0, and a fleet at 0 wakes only once sequences plus lag reach
   `activation_threshold` (KEDA's activation).
4. **Error rate:** while the workers' failure rate exceeds `error_rate_threshold`, the policy does
   not scale down (failing workers are no reason to remove capacity).
5. **Stabilization** (the HPA's behaviour): the recommendation is the *lowest* of the last
   `scale_up_window_s` when above the current count, the *highest* of the last
   `scale_down_window_s` when below it; the count that ran when the scaler started counts as a
   recommendation of both windows, so a freshly started scaler waits a full window either way.
6. **Step limits:** at most `scale_up_max_step` replicas added and `scale_down_max_step` removed
   per decision, relative to the current count (a repeated decision while replicas start is
   idempotent, never a flap).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from services.scaler.trend import linear_slope

__all__ = ["FleetSignals", "PolicyConfig", "PolicyDecision", "ScalingAction", "ScalingPolicy", "WorkerLoad"]

ScalingAction = Literal["scale_up", "scale_down", "hold"]


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One worker's load at its latest snapshot."""

    instance: str
    running: float
    """Sequences being generated."""
    waiting: float
    """Sequences queued at the worker."""
    capacity: float | None
    """Sequences it can run at once (None when it did not say)."""
    finished_per_s: float = 0.0
    """Requests finished per second (since its previous snapshot)."""
    failed_per_s: float = 0.0
    """Requests failed per second."""


@dataclass(frozen=True, slots=True)
class FleetSignals:
    """Everything one decision looks at."""

    current: int
    """Replicas that exist now (the actuator's count, else the workers reporting)."""
    workers: tuple[WorkerLoad, ...] = ()
    """The workers' latest loads."""
    lag: float | None = None
    """Records on the request topics not yet committed by the batchers (None: unknown)."""
    lag_by_priority: Mapping[str, float] = field(default_factory=dict)
    """The same per priority (`high`, `normal`, `low`)."""

    @property
    def running(self) -> float:
        return sum(w.running for w in self.workers)

    @property
    def waiting(self) -> float:
        return sum(w.waiting for w in self.workers)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The policy's parameters (see the module docstring)."""

    min_replicas: int = 1
    max_replicas: int = 8
    target_utilization: float = 0.8
    default_capacity: float = 8.0
    lag_target_per_replica: float = 32.0
    trend_window_s: float = 120.0
    prediction_horizon_s: float = 60.0
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    scale_up_max_step: int = 4
    scale_down_max_step: int = 1
    scale_to_zero: bool = False
    activation_threshold: float = 1.0
    error_rate_threshold: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be in (0, 1]")
        if self.default_capacity <= 0 or self.lag_target_per_replica <= 0:
            raise ValueError("default_capacity and lag_target_per_replica must be positive")
        if min(self.trend_window_s, self.prediction_horizon_s, self.scale_up_window_s, self.scale_down_window_s) < 0:
            raise ValueError("windows and horizons must not be negative")
        if self.scale_up_max_step < 1 or self.scale_down_max_step < 1:
            raise ValueError("step limits must be at least 1")
        if self.activation_threshold < 0 or not 0 <= self.error_rate_threshold <= 1:
            raise ValueError("activation_threshold >= 0 and error_rate_threshold in [0, 1] are required")


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """What the policy wants, and why."""

    current: int
    desired: int
    action: ScalingAction
    reason: str
    signals: dict[str, float]


def _ceil(value: float) -> int:
    # round() first: 16 / (10 * 0.8) must be 2, not ceil(2.0000000000000004) = 3.
    return math.ceil(round(value, 9))


class ScalingPolicy:
    """Decides replica counts; keeps only its own history (loads for the trend, recommendations
    for the stabilization windows). Not thread-safe: one decision at a time."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self._loads: deque[tuple[float, float]] = deque()
        self._recommendations: deque[tuple[float, int]] = deque()
        self._started: tuple[float, int] | None = None

    def decide(self, signals: FleetSignals, now: float) -> PolicyDecision:
        """One decision at time `now` (seconds, any monotonic origin)."""
        c = self.config
        current = max(0, signals.current)
        workers = signals.workers
        reported = [w.capacity for w in workers if w.capacity is not None and w.capacity > 0]
        capacity = sum(reported) / len(reported) if reported else c.default_capacity
        running, waiting = signals.running, signals.waiting
        demand = running + waiting
        lag = signals.lag or 0.0
        reasons: list[str] = []

        # 1. load in replicas from each signal
        util_replicas = demand / (capacity * c.target_utilization)
        lag_replicas = lag / c.lag_target_per_replica
        load = max(util_replicas, lag_replicas)
        utilization = demand / (len(workers) * capacity) if workers else 0.0
        reasons.append(
            f"{demand:g} sequences (running {running:g}, waiting {waiting:g}) on {len(workers)} reporting "
            f"worker(s) of capacity {capacity:g} = {utilization:.0%} utilization -> {util_replicas:.2f} "
            f"replicas at a target of {c.target_utilization:.0%}"
        )
        if signals.lag is None:
            reasons.append("consumer lag unknown (not counted)")
        else:
            by = ", ".join(f"{p} {v:g}" for p, v in sorted(signals.lag_by_priority.items()))
            reasons.append(
                f"consumer lag {lag:g}{f' ({by})' if by else ''} at {c.lag_target_per_replica:g} per replica "
                f"-> {lag_replicas:.2f} replicas"
            )

        # 2. trend and prediction
        if self._loads and self._loads[-1][0] >= now:
            self._loads.pop()
        self._loads.append((now, load))
        while self._loads and now - self._loads[0][0] > c.trend_window_s:
            self._loads.popleft()
        # A trend needs history: until it spans half the window, a single jump would look like a
        # steep slope. A prediction at most doubles the need (one bad fit must not ask for max).
        span = self._loads[-1][0] - self._loads[0][0]
        slope = linear_slope(list(self._loads)) if span >= c.trend_window_s / 2 else 0.0
        predicted = min(load + max(0.0, slope) * c.prediction_horizon_s, 2 * load)
        if slope > 0 and c.prediction_horizon_s > 0 and _ceil(predicted) > _ceil(load):
            reasons.append(
                f"trend +{slope * 60:.2f} replicas/min over {c.trend_window_s:g} s predicts {predicted:.2f} "
                f"in {c.prediction_horizon_s:g} s"
            )
        needed = _ceil(max(load, predicted))

        # 3. bounds and scale to zero
        activity = demand + lag
        if c.scale_to_zero and current == 0 and activity < c.activation_threshold:
            raw = 0
            reasons.append(f"at zero and activity {activity:g} < activation threshold {c.activation_threshold:g}")
        elif c.scale_to_zero and activity == 0:
            raw = 0
            reasons.append("idle (no sequences, no lag): scale to zero allowed")
        else:
            floor = max(c.min_replicas, 1) if c.scale_to_zero else c.min_replicas
            raw = min(c.max_replicas, max(floor, needed))
            if raw != needed:
                reasons.append(f"needs {needed}, clamped to [{floor}, {c.max_replicas}] -> {raw}")
            else:
                reasons.append(f"needs {needed}")

        # 4. error rate
        finished = sum(w.finished_per_s for w in workers)
        failed = sum(w.failed_per_s for w in workers)
        error_rate = failed / (finished + failed) if finished + failed > 0 else 0.0
        if error_rate > c.error_rate_threshold and raw < current:
            reasons.append(
                f"error rate {error_rate:.0%} > {c.error_rate_threshold:.0%}: not scaling down while workers fail"
            )
            raw = current

        # 5. stabilization windows
        up, down = self._window_bounds(raw, current, now)
        stabilized = current
        if stabilized < up:
            stabilized = up
        if stabilized > down:
            stabilized = down
        if raw > current and stabilized < raw:
            reasons.append(
                f"scale-up stabilization ({c.scale_up_window_s:g} s window): lowest recent recommendation {up}"
            )
        elif raw < current and stabilized > raw:
            reasons.append(
                f"scale-down stabilization ({c.scale_down_window_s:g} s window): highest recent recommendation {down}"
            )

        # 6. step limits
        desired = min(stabilized, current + c.scale_up_max_step)
        desired = max(desired, current - c.scale_down_max_step)
        if desired != stabilized:
            step = c.scale_up_max_step if desired > current else c.scale_down_max_step
            reasons.append(f"step limit {step} per decision: {stabilized} -> {desired}")

        action: ScalingAction = "scale_up" if desired > current else "scale_down" if desired < current else "hold"
        reasons.append(f"current {current} -> desired {desired} ({action})")
        decision_signals = {
            "current": float(current),
            "reporting_workers": float(len(workers)),
            "running": float(running),
            "waiting": float(waiting),
            "capacity_per_worker": float(capacity),
            "utilization": float(utilization),
            "target_utilization": float(c.target_utilization),
            "utilization_replicas": float(util_replicas),
            "lag": float(lag) if signals.lag is not None else -1.0,
            "lag_replicas": float(lag_replicas),
            "trend_replicas_per_min": float(slope * 60),
            "predicted_replicas": float(predicted),
            "error_rate": float(error_rate),
            "needed": float(needed),
            "recommended": float(raw),
            "stabilized": float(stabilized),
        }
        for priority, value in signals.lag_by_priority.items():
            decision_signals[f"lag_{priority}"] = float(value)
        return PolicyDecision(
            current=current, desired=desired, action=action, reason="; ".join(reasons)[:4_000], signals=decision_signals
        )

    def _window_bounds(self, raw: int, current: int, now: float) -> tuple[int, int]:
        """Records `raw`; returns the lowest recommendation of the scale-up window and the highest
        of the scale-down window."""
        c = self.config
        if self._started is None:
            self._started = (now, current)
        if self._recommendations and self._recommendations[-1][0] >= now:
            self._recommendations.pop()  # a second decision at the same instant supersedes the first
        self._recommendations.append((now, raw))
        horizon = max(c.scale_up_window_s, c.scale_down_window_s)
        while self._recommendations and now - self._recommendations[0][0] > horizon:
            self._recommendations.popleft()
        up = min(r for t, r in self._recommendations if now - t <= c.scale_up_window_s)
        down = max(r for t, r in self._recommendations if now - t <= c.scale_down_window_s)
        # What ran when this scaler started counts as a recommendation of both windows.
        if now - self._started[0] < c.scale_up_window_s:
            up = min(up, self._started[1])
        if now - self._started[0] < c.scale_down_window_s:
            down = max(down, self._started[1])
        return up, down
