"""The guardian's settings (``LGC_GUARDIAN_*`` plus the shared ``LGC_*`` cluster settings)."""

from __future__ import annotations

from pydantic import Field

from shared.records import MAX_TEXT_CHARS
from shared.settings import ClusterSettings

__all__ = ["GuardianSettings"]


class GuardianSettings(ClusterSettings):
    """Where the guardian listens and how it consumes results."""

    guardian_host: str = Field("127.0.0.1", pattern=r"^[A-Za-z0-9._:-]+$", max_length=253)
    """Interface of the HTTP API (`0.0.0.0` in containers)."""

    guardian_http_port: int = Field(8090, ge=1, le=65535)
    """Port of `POST /v1/guard/check`, /metrics, /health and /ready."""

    guardian_consumer_group: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$", max_length=255)
    """Consumer group on the results topic; default `<topic_prefix>-guardian` (`lgc-guardian`), so
    clusters that share a Kafka under different prefixes do not share a group."""

    guardian_fetch_max_wait_ms: int = Field(100, ge=0, le=60_000)
    """Longest a fetch of results waits. Verdicts are asynchronous, so this is higher than the
    cluster's latency-first default: an idle guardian then asks the broker 10 times a second, not 200."""

    guardian_max_batch: int = Field(200, ge=1, le=10_000)
    """Most results taken from Kafka at once (their verdicts are committed together)."""

    guardian_min_score: float = Field(0.5, ge=0.0, le=1.0)
    """Findings scored below this are ignored (not reported, not acted on)."""

    guardian_inline_max_chars: int = Field(20_000, ge=0, le=MAX_TEXT_CHARS * 2)
    """Texts longer than this are evaluated on a worker thread so the event loop stays responsive;
    shorter ones (microseconds of regex work) inline."""

    guardian_retry_backoff_s: float = Field(1.0, gt=0, le=60)
    """Pause before re-reading results whose verdicts could not be published."""

    @property
    def consumer_group(self) -> str:
        """The consumer group actually used."""
        return self.guardian_consumer_group or f"{self.topic_prefix}-guardian"
