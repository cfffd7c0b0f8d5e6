"""Every `interval_s`: ask the policy for a decision and publish it when it changed (or as a
heartbeat). The actuator is `dry-run` for now: decisions are advice for operators."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from services.scaler.fleet_view import FleetView
from services.scaler.metrics import ScalerMetrics
from services.scaler.policy import PolicyDecision, UtilizationPolicy
from shared.records import ScalingDecision
from shared.topics import Topics

__all__ = ["DecisionLoop"]

log = logging.getLogger(__name__)


class DecisionLoop:
    """Computes and publishes decisions; `tick()` is one round (tests call it directly)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: Topics,
        view: FleetView,
        policy: UtilizationPolicy,
        metrics: ScalerMetrics,
        *,
        interval_s: float,
        heartbeat_s: float,
        actuator: str = "dry-run",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._view = view
        self._policy = policy
        self._metrics = metrics
        self._interval_s = interval_s
        self._heartbeat_s = heartbeat_s
        self._actuator = actuator
        self._clock = clock
        self._last_desired: int | None = None
        self._last_published_at = 0.0

    async def run(self) -> None:
        """A decision every interval until cancelled (a timer, not a poll)."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Safe: the next tick decides again from fresher data; a missed publish only
                # delays advice by one interval.
                log.warning("scaling decision failed", exc_info=True)

    async def tick(self) -> ScalingDecision | None:
        """One round; returns the decision if it was published."""
        now = self._clock()
        decision = self._policy.decide(self._view.live(now))
        self._metrics.observe(decision)
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
            actuator=self._actuator,
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
                "reason": decision.reason,
            },
        )
        return record

    def _publish_reason(self, decision: PolicyDecision, now: float) -> str | None:
        if self._last_desired is None:
            return "first"
        if decision.desired != self._last_desired:
            return "changed"
        if now - self._last_published_at >= self._heartbeat_s:
            return "heartbeat"
        return None
