"""Reads GenerationResults, judges each answer and publishes a GuardianVerdict per result.

At-least-once: a partition's offset is committed only after the verdicts of everything before it
were acknowledged by the broker (or the record was dead-lettered). If publishing fails, the
consumer seeks back and reads the same records again after a pause, so a verdict may be published
twice (consumers keep the last one per request id) but never skipped.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from services.guardian.evaluator import Evaluation, Evaluator
from services.guardian.metrics import GuardianMetrics
from shared.deadletter import publish_dead_letter
from shared.records import GenerationResult, GuardMode
from shared.structured_logging import request_context
from shared.topics import Topics

__all__ = ["ResultConsumer"]

log = logging.getLogger(__name__)


class ResultConsumer:
    """The guardian's consume -> judge -> publish -> commit loop."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        evaluator: Evaluator,
        metrics: GuardianMetrics,
        topics: Topics,
        *,
        consumer_name: str,
        max_batch: int = 200,
        inline_max_chars: int = 20_000,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._evaluator = evaluator
        self._metrics = metrics
        self._topics = topics
        self._consumer_name = consumer_name
        self._max_batch = max_batch
        self._inline_max_chars = inline_max_chars
        self._retry_backoff_s = retry_backoff_s

    async def run(self) -> None:
        """Consume until cancelled."""
        while True:
            # Blocks on the broker (a long poll), not a spin: returns when records arrive or
            # after the timeout with nothing.
            batches = await self._consumer.getmany(timeout_ms=1_000, max_records=self._max_batch)
            for tp, records in batches.items():
                await self._process_partition(tp, records)

    async def _process_partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        try:
            sends = []
            for record in records:
                future = await self._process(record)
                if future is not None:
                    sends.append(future)
            await asyncio.gather(*sends)
        except KafkaError:
            # Safe: nothing was committed for these records; seek back so they are read again
            # after a pause (at-least-once), instead of crashing or skipping them.
            log.warning("could not publish verdicts; will re-read", extra={"partition": tp.partition}, exc_info=True)
            self._metrics.publish_failures.inc()
            self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(self._retry_backoff_s)
            return
        try:
            await self._consumer.commit({tp: records[-1].offset + 1})
        except (CommitFailedError, KafkaError):
            # Safe: the partition was probably reassigned; its new owner re-reads from the last
            # committed offset and publishes the same verdicts again (duplicates are harmless).
            log.warning("could not commit results offsets", extra={"partition": tp.partition}, exc_info=True)
        highwater = self._consumer.highwater(tp)
        if highwater is not None:
            self._metrics.lag(tp.partition, max(0, highwater - (records[-1].offset + 1)))

    async def _process(self, record: ConsumerRecord) -> asyncio.Future[object] | None:
        """Judge one record; returns the pending send of its verdict (None when there is none)."""
        try:
            result = GenerationResult.from_bytes(record.value or b"")
        except (ValidationError, ValueError) as exc:
            # Safe: the record is kept, untouched, on the dead-letter topic (acknowledged before
            # the commit moves past it).
            await self._dead_letter(record, f"invalid GenerationResult: {exc}")
            return None
        if result.guard is GuardMode.OFF:
            self._metrics.result("skipped")
            return None
        with request_context(result.request_id):
            try:
                evaluation = await self._evaluate(result)
            except Exception as exc:  # noqa: BLE001
                # Safe: a detector bug must not turn one record into a poison pill that stops
                # every verdict after it; the record goes to the dead-letter topic with the error.
                log.exception("evaluation failed; dead-lettering the result")
                await self._dead_letter(record, f"evaluation failed: {exc!r}")
                return None
            self._metrics.observe(evaluation, "consumer")
            self._metrics.result("evaluated")
            verdict = evaluation.verdict
            if verdict.action.value != "allow":
                log.info(
                    "verdict",
                    extra={"action": verdict.action.value, "categories": [c.category for c in verdict.categories]},
                )
            return await self._producer.send(self._topics.verdicts, verdict.to_bytes(), key=verdict.request_id)

    async def _dead_letter(self, record: ConsumerRecord, error: str) -> None:
        await publish_dead_letter(self._producer, self._topics.deadletter, record, error, consumer=self._consumer_name)
        self._metrics.result("deadlettered")

    async def _evaluate(self, result: GenerationResult) -> Evaluation:
        def judge() -> Evaluation:
            return self._evaluator.evaluate(
                result.text, kind="response", request_id=result.request_id, tenant=result.tenant
            )

        # Microseconds of regex for ordinary answers: inline. Long texts go to a thread so the
        # loop keeps serving the check API and Kafka heartbeats meanwhile.
        if len(result.text) > self._inline_max_chars:
            return await asyncio.to_thread(judge)
        return judge()
