"""The one place that names the cluster's Kafka topics and creates them.

Topics are never auto-created (Tansu does not, and production Kafka clusters usually forbid it):
`lgc up`, the compose topic-init job and each gateway (for its own reply topic) call
:func:`ensure_topics` explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.records import Priority
from shared.settings import ClusterSettings

__all__ = ["TopicSpec", "Topics", "ensure_topics"]

log = logging.getLogger(__name__)

#: Kafka's error code for "topic already exists" in a CreateTopics response.
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create."""

    name: str
    partitions: int
    replication_factor: int


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix (DESIGN.md §3)."""

    prefix: str = "lgc"

    @classmethod
    def from_settings(cls, settings: ClusterSettings) -> Topics:
        return cls(prefix=settings.topic_prefix)

    def requests(self, priority: Priority) -> str:
        """`<prefix>.requests.<priority>`: GenerationRequest, keyed by request id."""
        return f"{self.prefix}.requests.{priority.value}"

    @property
    def all_requests(self) -> tuple[str, ...]:
        """The request topics, highest priority first."""
        return tuple(self.requests(p) for p in Priority)

    def priority_of(self, topic: str) -> Priority:
        """The priority a request topic stands for; ValueError for any other topic."""
        for priority in Priority:
            if topic == self.requests(priority):
                return priority
        raise ValueError(f"{topic!r} is not a request topic")

    def replies(self, instance: str) -> str:
        """`<prefix>.replies.<instance>`: ReplyEvents for one gateway instance or upstream system."""
        return f"{self.prefix}.replies.{instance}"

    @property
    def results(self) -> str:
        """GenerationResult, keyed by request id."""
        return f"{self.prefix}.results"

    @property
    def cancellations(self) -> str:
        """Cancel, keyed by request id; every batcher reads all of it."""
        return f"{self.prefix}.cancellations"

    @property
    def metrics(self) -> str:
        """MetricsSnapshot, keyed by service instance."""
        return f"{self.prefix}.metrics"

    @property
    def verdicts(self) -> str:
        """GuardianVerdict, keyed by request id."""
        return f"{self.prefix}.verdicts"

    @property
    def scaling(self) -> str:
        """ScalingDecision, keyed by service name."""
        return f"{self.prefix}.scaling"

    @property
    def deadletter(self) -> str:
        """Records a consumer could not parse: the original bytes, the error in headers."""
        return f"{self.prefix}.deadletter"

    def cluster_topics(self, settings: ClusterSettings) -> list[TopicSpec]:
        """Every shared topic with its partition count (reply topics are made per instance)."""
        rf = settings.topic_replication_factor
        specs = [TopicSpec(t, settings.request_topic_partitions, rf) for t in self.all_requests]
        specs += [
            TopicSpec(t, settings.topic_partitions, rf)
            for t in (self.results, self.metrics, self.verdicts, self.deadletter)
        ]
        # One partition each: cancellations are broadcast (each batcher reads everything) and
        # scaling decisions are a low-volume audit log whose order matters.
        specs += [TopicSpec(self.cancellations, 1, rf), TopicSpec(self.scaling, 1, rf)]
        return specs

    def reply_topic_spec(self, instance: str, settings: ClusterSettings) -> TopicSpec:
        """A reply topic: one partition is plenty, one gateway instance reads it all."""
        return TopicSpec(self.replies(instance), 1, settings.topic_replication_factor)


async def ensure_topics(settings: ClusterSettings, specs: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created.

    Existing topics are left as they are (their partition count is not changed).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"lgc-admin-{settings.instance_id}",
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor) for s in missing]
        )
        created: list[str] = []
        for topic, code, message in _topic_errors(response):
            if code == 0:
                created.append(topic)
            elif code != _TOPIC_ALREADY_EXISTS:
                # Safe to raise: nothing was half-done that the caller must undo; topics that
                # were created stay, and a retry skips them.
                raise RuntimeError(f"could not create topic {topic!r}: error {code} {message}")
        if created:
            log.info("created topics", extra={"topics": created})
        return created
    finally:
        await admin.close()


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    """(topic, error_code, message) from any CreateTopicsResponse version."""
    out = []
    for entry in getattr(response, "topic_errors", []):
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        out.append((topic, code, message))
    return out
