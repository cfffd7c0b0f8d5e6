"""Dead-lettering: a record a consumer cannot parse goes to `<prefix>.deadletter` and the consumer
moves on.

The dead-letter record keeps the original key and value bytes untouched (so an operator can replay
them after a fix) and says what went wrong in headers, as Kafka Connect's dead-letter queues do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from shared.records import now

__all__ = ["DeadLetter", "HEADER_PREFIX", "dead_letter_from_headers", "publish_dead_letter"]

log = logging.getLogger(__name__)

HEADER_PREFIX = "lgc.dlq."
_MAX_ERROR_BYTES = 4_096


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What the dead-letter headers say about a refused record."""

    error: str
    topic: str
    partition: int
    offset: int
    consumer: str
    failed_at: float


async def publish_dead_letter(
    producer: AIOKafkaProducer,
    deadletter_topic: str,
    record: ConsumerRecord,
    error: str,
    *,
    consumer: str,
) -> None:
    """Send `record`'s bytes to the dead-letter topic with the reason; waits for the broker's ack
    so the caller may then commit past the record without losing it."""
    headers = [
        (HEADER_PREFIX + "error", error.encode()[:_MAX_ERROR_BYTES]),
        (HEADER_PREFIX + "topic", record.topic.encode()),
        (HEADER_PREFIX + "partition", str(record.partition).encode()),
        (HEADER_PREFIX + "offset", str(record.offset).encode()),
        (HEADER_PREFIX + "consumer", consumer.encode()),
        (HEADER_PREFIX + "failed_at", repr(now()).encode()),
    ]
    await producer.send_and_wait(deadletter_topic, value=record.value, key=record.key, headers=headers)
    log.warning(
        "dead-lettered a record",
        extra={"topic": record.topic, "partition": record.partition, "offset": record.offset, "error": error[:300]},
    )


def dead_letter_from_headers(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> DeadLetter:
    """Read the reason back from a dead-letter record's headers."""
    values = {k[len(HEADER_PREFIX):]: v.decode() for k, v in headers if k.startswith(HEADER_PREFIX)}
    return DeadLetter(
        error=values["error"],
        topic=values["topic"],
        partition=int(values["partition"]),
        offset=int(values["offset"]),
        consumer=values["consumer"],
        failed_at=float(values["failed_at"]),
    )
