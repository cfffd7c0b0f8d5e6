"""The scaling policy: pure functions of the workers' latest load, no I/O, so later issues can grow
it (trend, prediction, cooldown, error rate) and tests can replay recorded series through it.

Current policy (utilization target):
    desired = ceil((running + waiting) / (capacity_per_worker * target_utilization))
clamped to [min_replicas, max_replicas], where `capacity_per_worker` is the mean capacity the
workers report (or a default when none does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["PolicyDecision", "UtilizationPolicy", "WorkerLoad"]

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


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """What the policy wants, and why."""

    current: int
    desired: int
    action: ScalingAction
    reason: str
    signals: dict[str, float]


@dataclass(frozen=True, slots=True)
class UtilizationPolicy:
    """Keep the workers at `target_utilization` of their capacity."""

    min_replicas: int = 1
    max_replicas: int = 8
    target_utilization: float = 0.8
    default_capacity: float = 8.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be in (0, 1]")
        if self.default_capacity <= 0:
            raise ValueError("default_capacity must be positive")

    def decide(self, loads: Sequence[WorkerLoad]) -> PolicyDecision:
        current = len(loads)
        running = sum(w.running for w in loads)
        waiting = sum(w.waiting for w in loads)
        reported = [w.capacity for w in loads if w.capacity is not None and w.capacity > 0]
        capacity = sum(reported) / len(reported) if reported else self.default_capacity
        demand = running + waiting
        # round() first: 16 / (10 * 0.8) must be 2, not ceil(2.0000000000000004) = 3.
        needed = math.ceil(round(demand / (capacity * self.target_utilization), 9))
        desired = min(self.max_replicas, max(self.min_replicas, needed))
        action: ScalingAction = "scale_up" if desired > current else "scale_down" if desired < current else "hold"
        utilization = demand / (current * capacity) if current else 0.0
        if current == 0:
            reason = f"no worker reported metrics; keeping the minimum of {self.min_replicas}"
            if needed > self.min_replicas:
                reason = f"no worker reported metrics but {demand:g} sequences are known; {desired} needed"
        else:
            reason = (
                f"{demand:g} sequences (running {running:g}, waiting {waiting:g}) on {current} worker(s) of "
                f"capacity {capacity:g} = {utilization:.0%} utilization; at a target of "
                f"{self.target_utilization:.0%} that needs {needed}"
            )
            if desired != needed:
                reason += f", clamped to [{self.min_replicas}, {self.max_replicas}] -> {desired}"
        signals = {
            "running": float(running),
            "waiting": float(waiting),
            "capacity_per_worker": float(capacity),
            "utilization": float(utilization),
            "target_utilization": float(self.target_utilization),
            "needed": float(needed),
            "reporting_workers": float(current),
        }
        return PolicyDecision(current=current, desired=desired, action=action, reason=reason, signals=signals)
