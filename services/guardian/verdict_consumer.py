"""The guardian's consume -> judge -> publish -> commit loop, in batches.

One instance reads one source: the results topic (answers, `kind="response"`) or the request topics
(prompts, when prompt checks are on), in its own consumer group. Each fetch of up to `max_batch`
records (across partitions) is judged as ONE batch by the :class:`VerdictPipeline` (verdict cache,
sampling by lag, detectors on the thread pool), its verdicts are sent to `<prefix>.verdicts` keyed by
request id, and only when the broker acknowledged all of them are the partitions' offsets committed.

At-least-once: if publishing fails, the consumer seeks every partition of the batch back to its
first record and reads them again after a pause, so a verdict may be published twice (consumers
keep the last one per request id) but never skipped. A record that is not a valid record goes to
`<prefix>.deadletter`; if the batch's evaluation fails (a detector bug), the batch is judged again
text by text so that only the text it fails on is dead-lettered, never the whole batch.

Verdicts are asynchronous, so while no results come the fetch wait grows to the cluster's
deep-idle wait (`AdaptiveFetchWait.off_serving_path`): an idle guardian asks the broker about once
a second; the first result after a silence is judged up to that much later, the rest at the busy
wait (`guardian_fetch_max_wait_ms`).

Lag (records behind, all assigned partitions) is the broker's high watermark from the last fetch
minus the consumer's position, plus the batch in hand: no extra requests to the broker.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from services.guardian.metrics import GuardianMetrics
from services.guardian.subjects import Subject, SubjectParser
from services.guardian.verdict_pipeline import VerdictPipeline
from shared.deadletter import publish_dead_letter
from shared.kafka_clients import AdaptiveFetchWait
from shared.records import GuardianVerdict
from shared.structured_logging import request_context
from shared.topics import Topics

__all__ = ["VerdictConsumer"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    record: ConsumerRecord
    subject: Subject


class VerdictConsumer:
    """Reads one source and publishes a verdict per record."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pipeline: VerdictPipeline,
        metrics: GuardianMetrics,
        topics: Topics,
        *,
        parse: SubjectParser,
        source: str,
        consumer_name: str,
        max_batch: int = 200,
        retry_backoff_s: float = 1.0,
        fetch_wait: AdaptiveFetchWait | None = None,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._pipeline = pipeline
        self._metrics = metrics
        self._topics = topics
        self._parse = parse
        self.source = source
        self._consumer_name = consumer_name
        self._max_batch = max_batch
        self._retry_backoff_s = retry_backoff_s
        self._fetch_wait = fetch_wait

    async def run(self) -> None:
        """Consume until cancelled."""
        while True:
            # Blocks on the broker (a long poll), not a spin: returns when records arrive or
            # after the timeout with nothing.
            batches = await self._consumer.getmany(timeout_ms=1_000, max_records=self._max_batch)
            if self._fetch_wait is not None:
                self._fetch_wait.polled(sum(len(records) for records in batches.values()))
            if batches:
                await self.process(await self._fill(batches))

    async def _fill(
        self, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Top a fetch up to `max_batch` with records already fetched (timeout 0: never waits), so a
        backlog is judged in full batches: model-based detectors cost per call, not per text."""
        count = sum(len(records) for records in batches.values())
        while count < self._max_batch:
            more = await self._consumer.getmany(timeout_ms=0, max_records=self._max_batch - count)
            if not more:
                break
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)
        return batches

    async def lag(self, in_hand: int) -> int:
        """Records not yet judged: high watermark minus position over assigned partitions, plus
        the `in_hand` records already fetched but not judged."""
        behind = in_hand
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            behind += max(0, highwater - await self._consumer.position(tp))
        return behind

    async def process(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Judge, publish and commit one fetch."""
        count = sum(len(records) for records in batches.values())
        lag = await self.lag(count)
        self._metrics.lag(self.source, lag)
        items: list[_Item] = []
        dead: list[tuple[ConsumerRecord, str]] = []
        skipped = 0
        for records in batches.values():
            for record in records:
                try:
                    subject = self._parse(record.value or b"")
                except ValueError as exc:
                    # Safe: the record is kept, untouched, on the dead-letter topic (acknowledged
                    # before the commit moves past it).
                    dead.append((record, str(exc)))
                    continue
                if subject is None:
                    skipped += 1
                else:
                    items.append(_Item(record, subject))
        verdicts, failed = await self._judge(items, lag)
        dead.extend(failed)
        try:
            sends = [
                await self._producer.send(self._topics.verdicts, v.to_bytes(), key=v.request_id) for v in verdicts
            ]
            for record, error in dead:
                await publish_dead_letter(
                    self._producer, self._topics.deadletter, record, error, consumer=self._consumer_name
                )
            await asyncio.gather(*sends)
        except KafkaError:
            # Safe: nothing was committed for these records; seek back so they are read again
            # after a pause (at-least-once), instead of crashing or skipping them.
            log.warning("could not publish verdicts; will re-read", extra={"records": count}, exc_info=True)
            self._metrics.publish_failures.inc()
            assigned = self._consumer.assignment()
            for tp, records in batches.items():
                if tp in assigned:  # a partition lost in a rebalance is re-read by its new owner
                    self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(self._retry_backoff_s)
            return
        cached = sum(v.cached for v in verdicts)
        self._metrics.record(self.source, "evaluated", len(verdicts) - cached)
        self._metrics.record(self.source, "cached", cached)
        self._metrics.record(self.source, "skipped", skipped)
        self._metrics.record(self.source, "deadlettered", len(dead))
        for verdict in verdicts:
            if verdict.action.value != "allow":
                with request_context(verdict.request_id):
                    log.info(
                        "verdict",
                        extra={
                            "action": verdict.action.value,
                            "kind": verdict.kind,
                            "tenant": verdict.tenant,
                            "categories": [c.category for c in verdict.categories],
                        },
                    )
        try:
            await self._consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        except (CommitFailedError, KafkaError):
            # Safe: the partitions were probably reassigned; their new owner re-reads from the last
            # committed offsets and publishes the same verdicts again (duplicates are harmless).
            log.warning("could not commit offsets", extra={"source": self.source}, exc_info=True)

    async def _judge(
        self, items: list[_Item], lag: int
    ) -> tuple[list[GuardianVerdict], list[tuple[ConsumerRecord, str]]]:
        """Verdicts for `items`, and the records the detectors failed on (with the error)."""
        if not items:
            return [], []
        try:
            return await self._pipeline.judge([i.subject for i in items], lag=lag, source=self.source), []
        except Exception:
            # Safe: a detector bug on one text must not stop every verdict after it; the batch is
            # judged again text by text below, and only the failing texts are dead-lettered.
            log.exception("batch evaluation failed; judging its texts one by one")
        verdicts: list[GuardianVerdict] = []
        failed: list[tuple[ConsumerRecord, str]] = []
        for item in items:
            try:
                verdicts += await self._pipeline.judge([item.subject], lag=lag, source=self.source)
            except Exception as exc:  # noqa: BLE001
                # Safe: the record goes to the dead-letter topic with the error, and the loop goes on.
                with request_context(item.subject.request_id):
                    log.exception("evaluation failed; dead-lettering the record")
                failed.append((item.record, f"evaluation failed: {exc!r}"))
        return verdicts, failed
