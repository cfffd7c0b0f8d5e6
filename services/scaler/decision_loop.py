"""Every `interval_s`: gather the signals (worker snapshots, consumer lag, the actuator's replica
count), ask the policy, publish the decision when it changed (or as a heartbeat) and hand the
desired count to the actuator."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.scaler.actuators import ActuationError, Actuator, DryRunActuator
from services.scaler.fleet_view import FleetView
from services.scaler.lag_reader import ConsumerLag, LagReader
from services.scaler.metrics import ScalerMetrics
from services.scaler.policy import FleetSignals, PolicyDecision, ScalingPolicy
from shared.records import ScalingDecision
from shared.topics import Topics

__all__ = ["DecisionLoop"]

log = logging.getLogger(__name__)


class DecisionLoop:
    """Computes, publishes and applies decisions; `tick()` is one round (tests call it directly)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: Topics,
        view: FleetView,
        policy: ScalingPolicy,
        metrics: ScalerMetrics,
        *,
        interval_s: float,
        heartbeat_s: float,
        actuator: Actuator | None = None,
        lag_reader: LagReader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._view = view
        self._policy = policy
        self._metrics = metrics
        self._interval_s = interval_s
        self._heartbeat_s = heartbeat_s
        self.actuator: Actuator = actuator or DryRunActuator()
        self._lag_reader = lag_reader
        self._clock = clock
        self._last_desired: int | None = None
        self._last_published_at = 0.0
        self._last_applied: int | None = None
        self._last_applied_at = 0.0

    async def run(self) -> None:
        """A decision every interval until cancelled (a timer, not a poll)."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Safe: the next tick decides again from fresher data; a missed publish or
                # actuation only delays it by one interval.
                log.warning("scaling decision failed", exc_info=True)

    async def _lag(self) -> ConsumerLag | None:
        if self._lag_reader is None:
            return None
        try:
            return await self._lag_reader.read()
        except (KafkaError, TimeoutError, OSError):
            # Safe: the policy decides without lag (and says so in its reason) this time.
            log.warning("could not read consumer lag", exc_info=True)
            return None

    async def _actual_replicas(self) -> int | None:
        try:
            return await self.actuator.current()
        except ActuationError:
            # Safe: the workers reporting metrics are counted instead.
            log.warning("actuator could not count replicas", exc_info=True)
            return None

    async def tick(self) -> ScalingDecision | None:
        """One round; returns the decision if it was published."""
        now = self._clock()
        workers = tuple(self._view.live(now))
        lag = await self._lag()
        actual = await self._actual_replicas()
        signals = FleetSignals(
            current=actual if actual is not None else len(workers),
            workers=workers,
            lag=None if lag is None else lag.total,
            lag_by_priority={} if lag is None else lag.by_priority,
        )
        decision = self._policy.decide(signals, now)
        self._metrics.observe(decision)
        await self._apply(decision, actual, now)
        why = self._publish_reason(decision, now)
        if why is None:
            return None
        record = ScalingDecision(
            service="worker",
            current=decision.current,
            desired=decision.desired,
            action=decision.action,
            reason=decision.reason,
            signals=decision.signals,
            actuator=self.actuator.name,
        )
        await self._producer.send_and_wait(self._topics.scaling, record.to_bytes(), key=record.service)
        self._last_desired = decision.desired
        self._last_published_at = now
        self._metrics.published.labels(why).inc()
        log.info(
            "scaling decision",
            extra={
                "action": decision.action,
                "current": decision.current,
                "desired": decision.desired,
                "why": why,
                "actuator": self.actuator.name,
                "reason": decision.reason,
            },
        )
        return record

    async def _apply(self, decision: PolicyDecision, actual: int | None, now: float) -> None:
        """Hand the desired count over when it changed, differs from what runs, or is due again."""
        if isinstance(self.actuator, DryRunActuator):
            return
        due = (
            decision.desired != self._last_applied
            or (actual is not None and actual != decision.desired)
            or now - self._last_applied_at >= self._heartbeat_s
        )
        if not due:
            return
        try:
            await self.actuator.apply(decision.desired)
        except ActuationError:
            # Safe: nothing was recorded as applied, so the next tick tries again.
            self._metrics.actuations.labels(self.actuator.name, "failed").inc()
            log.warning("actuator failed", exc_info=True, extra={"desired": decision.desired})
            return
        self._metrics.actuations.labels(self.actuator.name, "ok").inc()
        self._last_applied = decision.desired
        self._last_applied_at = now

    def _publish_reason(self, decision: PolicyDecision, now: float) -> str | None:
        if self._last_desired is None:
            return "first"
        if decision.desired != self._last_desired:
            return "changed"
        if now - self._last_published_at >= self._heartbeat_s:
            return "heartbeat"
        return None
