"""Replay a bursty day-shaped request trace through scaling policies in simulation and print JSON:
SLO-violation minutes and replica-seconds for the scaler's policy, a fixed fleet at the maximum, and
a plain HPA-style utilization rule.

Usage:

    .venv/bin/python load-tests/scaler_trace_bench.py [--seed 7] [--minutes 1440] [--max-replicas 20]

The trace (deterministic for a seed), one step per minute:
    a day curve from `--night` requests/min (04:00) to `--peak` (16:00), 10 % noise, plus
    `--spikes` bursts of +100..+300 requests/min lasting 3..20 minutes at random times.

The queueing model, per minute:
    each *active* replica serves `--per-replica` requests per minute; what is not served is backlog
    carried to the next minute; a replica asked for becomes active after `--start-minutes` (a
    worker's start-up) and costs replica-seconds from the moment it is asked for; a replica
    removed stops at once. A minute violates the SLO when the backlog left at its end could not be
    served within `--slo-wait-minutes` by the active replicas (or there is backlog and none).

The policies, deciding at the end of each minute from what that minute showed:
    * `policy`: services/scaler/policy.py's ScalingPolicy (utilization + lag per replica as KEDA +
      trend/prediction, HPA-style stabilization windows and step limits), fed the worker load
      (`running` = requests served in the minute, capacity = per-replica rate) and the lag
      (requests in the system: served + backlog) with a lag target of one replica's rate;
    * `fixed_max`: `--max-replicas` all day;
    * `plain_hpa`: desired = ceil(active * utilization / target), utilization = served / capacity
      (at most 100 %, like CPU), no trend and no lag; the HPA's default 300 s scale-down window.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.scaler.policy import FleetSignals, PolicyConfig, ScalingPolicy, WorkerLoad  # noqa: E402


@dataclass(frozen=True)
class Observation:
    """What one minute showed the policy."""

    minute: int
    active: int
    provisioned: int
    served: float
    backlog: float
    per_replica: float


Decide = Callable[[Observation], int]


def make_trace(seed: int, minutes: int, night: float, peak: float, spikes: int) -> list[float]:
    """Requests arriving in each minute."""
    rng = random.Random(seed)
    rate = []
    for t in range(minutes):
        phase = 2 * math.pi * ((t % 1440) - 240) / 1440  # lowest at 04:00, highest at 16:00
        day = night + (peak - night) * (1 - math.cos(phase)) / 2
        rate.append(max(0.0, day * rng.gauss(1.0, 0.1)))
    for _ in range(spikes):
        start = rng.randrange(0, max(1, minutes - 20))
        length = rng.randint(3, 20)
        height = rng.uniform(100, 300)
        for t in range(start, min(minutes, start + length)):
            rate[t] += height
    return [round(r, 1) for r in rate]


def simulate(trace: list[float], decide: Decide, *, per_replica: float, start_minutes: int, slo_wait: float,
             initial: int) -> dict[str, float]:
    """Run the queueing model with one policy; returns its totals."""
    provisioned = initial
    ready_at: list[int] = [0] * initial  # minute each provisioned replica becomes active
    backlog = 0.0
    violations = 0
    replica_minutes = 0.0
    peak = initial
    for minute, arrivals in enumerate(trace):
        active = sum(1 for r in ready_at if r <= minute)
        capacity = active * per_replica
        work = backlog + arrivals
        served = min(work, capacity)
        backlog = work - served
        if backlog > 0 and (active == 0 or backlog > slo_wait * capacity):
            violations += 1
        replica_minutes += provisioned
        desired = decide(Observation(minute, active, provisioned, served, backlog, per_replica))
        if desired > provisioned:
            ready_at += [minute + 1 + start_minutes] * (desired - provisioned)
        elif desired < provisioned:
            # Stop the newest (starting ones first).
            ready_at = sorted(ready_at)[:desired]
        provisioned = desired
        peak = max(peak, provisioned)
    return {
        "slo_violation_minutes": violations,
        "replica_seconds": round(replica_minutes * 60),
        "mean_replicas": round(replica_minutes / len(trace), 2),
        "peak_replicas": peak,
        "final_backlog": round(backlog, 1),
    }


def scaler_policy(config: PolicyConfig) -> Decide:
    policy = ScalingPolicy(config)

    def decide(o: Observation) -> int:
        # The served requests spread evenly over the active replicas; lag = everything in the system.
        loads = tuple(WorkerLoad(f"w{i}", o.served / o.active, 0.0, o.per_replica) for i in range(o.active))
        signals = FleetSignals(current=o.provisioned, workers=loads, lag=o.served + o.backlog,
                               lag_by_priority={"normal": o.served + o.backlog})
        return policy.decide(signals, now=o.minute * 60.0).desired

    return decide


def plain_hpa(*, target: float, min_replicas: int, max_replicas: int, down_window_min: int) -> Decide:
    history: list[tuple[int, int]] = []

    def decide(o: Observation) -> int:
        util = o.served / (o.active * o.per_replica) if o.active else 0.0
        raw = math.ceil(round(max(1, o.active) * util / target, 9)) if o.active else min_replicas
        raw = min(max_replicas, max(min_replicas, raw))
        history.append((o.minute, raw))
        recent = [r for m, r in history if o.minute - m <= down_window_min]
        desired = raw if raw >= o.provisioned else min(o.provisioned, max(recent))
        return desired

    return decide


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--minutes", type=int, default=1440)
    parser.add_argument("--night", type=float, default=20.0, help="requests/min at the quietest hour")
    parser.add_argument("--peak", type=float, default=220.0, help="requests/min at the busiest hour")
    parser.add_argument("--spikes", type=int, default=10)
    parser.add_argument("--per-replica", type=float, default=25.0, help="requests/min one replica serves")
    parser.add_argument("--max-replicas", type=int, default=24)
    parser.add_argument("--start-minutes", type=int, default=1, help="minutes from asking to serving")
    parser.add_argument("--slo-wait-minutes", type=float, default=1.0)
    args = parser.parse_args(argv)

    trace = make_trace(args.seed, args.minutes, args.night, args.peak, args.spikes)
    config = PolicyConfig(
        min_replicas=1,
        max_replicas=args.max_replicas,
        target_utilization=0.8,
        default_capacity=args.per_replica,
        lag_target_per_replica=args.per_replica,
        trend_window_s=600.0,
        prediction_horizon_s=120.0,
        scale_up_window_s=0.0,
        scale_down_window_s=300.0,
        scale_up_max_step=10,
        scale_down_max_step=2,
    )
    sim = dict(per_replica=args.per_replica, start_minutes=args.start_minutes, slo_wait=args.slo_wait_minutes)
    results = {
        "policy": simulate(trace, scaler_policy(config), initial=1, **sim),
        "fixed_max": simulate(trace, lambda o: args.max_replicas, initial=args.max_replicas, **sim),
        "plain_hpa": simulate(
            trace,
            plain_hpa(target=0.8, min_replicas=1, max_replicas=args.max_replicas, down_window_min=5),
            initial=1,
            **sim,
        ),
    }
    ours, fixed, plain = results["policy"], results["fixed_max"], results["plain_hpa"]
    saving = 1 - ours["replica_seconds"] / fixed["replica_seconds"]
    report = {
        "trace": {
            "seed": args.seed,
            "minutes": args.minutes,
            "requests": round(sum(trace)),
            "peak_requests_per_min": max(trace),
            "night_requests_per_min": args.night,
            "spikes": args.spikes,
            "per_replica_requests_per_min": args.per_replica,
            "start_minutes": args.start_minutes,
            "slo_wait_minutes": args.slo_wait_minutes,
        },
        "policy_config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "results": results,
        "targets": {
            "violations_not_above_plain_hpa": ours["slo_violation_minutes"] <= plain["slo_violation_minutes"],
            "replica_seconds_saved_vs_fixed": round(saving, 3),
            "at_least_25_percent_saved": saving >= 0.25,
        },
    }
    report["targets"]["met"] = (
        report["targets"]["violations_not_above_plain_hpa"] and report["targets"]["at_least_25_percent_saved"]
    )
    print(json.dumps(report, indent=2))
    return 0 if report["targets"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
