"""The guardian's settings (``LGC_GUARDIAN_*`` plus the shared ``LGC_*`` cluster settings)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from services.guardian.policy_detector import compile_policy_pattern
from services.guardian.semantic_detector import HARM_FLOOR, HARM_HEAD_WEIGHT, HARM_MARGIN
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
    """Longest a fetch of results waits while results flow. Verdicts are asynchronous, so this is
    higher than the cluster's latency-first default; after `kafka_idle_after_s` without a result
    the wait grows to `kafka_deep_idle_fetch_max_wait_ms`, so an idle guardian asks the broker
    about once a second."""

    guardian_max_batch: int = Field(200, ge=1, le=10_000)
    """Most results taken from Kafka at once (their verdicts are committed together)."""

    guardian_min_score: float = Field(0.5, ge=0.0, le=1.0)
    """Findings scored below this are ignored (not reported, not acted on)."""

    guardian_retry_backoff_s: float = Field(1.0, gt=0, le=60)
    """Pause before re-reading results whose verdicts could not be published."""

    # ---- pipeline: verdict policy, cache, sampling, prompt checks ----------------------------

    guardian_block_threshold: float = Field(0.8, ge=0.0, le=1.0)
    """A `harm.*` finding scored at or above this makes the verdict `block`; below it (and at or
    above `guardian_min_score`), `flag`."""

    guardian_block_categories: tuple[Annotated[str, Field(min_length=1, max_length=128)], ...] = Field(
        ("secret.private_key",), max_length=256
    )
    """Categories that always make the verdict `block` (JSON list in the environment), whatever
    their score; by default a leaked private key, which masking a span cannot make safe."""

    guardian_policy_action: Literal["block", "flag"] = "block"
    """What a tenant-policy finding (`policy.*`) makes the verdict."""

    guardian_detector_threads: int = Field(4, ge=1, le=256)
    """Threads that run detectors (each detector's batch call is one task; detectors of a batch
    run at once). The event loop never runs detector code."""

    guardian_expensive_slices: int = Field(2, ge=1, le=64)
    """Each expensive detector's batch is cut into this many parallel slices (one detector-pool
    task each), so a model detector fills every core without torch's intra-op thread barriers
    (which stall whenever another process holds a core). About the number of cores."""

    guardian_torch_threads: int = Field(1, ge=1, le=256)
    """torch intra-op threads in the guardian process (the sentence encoder). 1: parallelism comes
    from `guardian_expensive_slices` instead (the encoder alone: 7 instead of 12 ms per text on a
    2-core machine that other jobs kept busy; end to end, within that machine's noise)."""

    guardian_blas_threads: int = Field(1, ge=1, le=256)
    """Threads numpy's BLAS (OpenBLAS) may use in the guardian process, where spaCy's NER does its
    matrix products. 1: parallelism comes from the detector pool instead. With OpenBLAS's default
    (one per core) its second thread only spun: NER used 8.8 instead of 5.7 ms of CPU per answer,
    in the same wall time (2026-12-06, 2 cores), CPU the worker's model would have used."""

    guardian_cache_enabled: bool = True
    """Cache verdicts in Redis by content hash, so repeated content is not judged again."""

    guardian_cache_ttl_s: int = Field(86_400, ge=1, le=30 * 86_400)
    """How long a cached verdict is re-issued."""

    guardian_sample_floor: float = Field(0.1, ge=0.0, le=1.0)
    """Lowest share of texts the expensive detectors run on when the guardian is far behind
    (cheap detectors always run on every text)."""

    guardian_sample_lag_low: int = Field(1_000, ge=0, le=1_000_000_000)
    """Consumer lag (records) up to which the expensive detectors run on every text."""

    guardian_sample_lag_high: int = Field(20_000, ge=1, le=1_000_000_000)
    """Consumer lag (records) from which the expensive detectors run at `guardian_sample_floor`;
    linear in between. Must be above `guardian_sample_lag_low`."""

    guardian_flagged_window_s: int = Field(3_600, ge=1, le=30 * 86_400)
    """After a non-`allow` verdict, the tenant's texts get every detector (no sampling) for this
    long (kept in Redis, so all guardian replicas agree)."""

    guardian_prompt_checks: bool = False
    """Also judge prompts: a second consumer group reads the request topics and publishes
    `kind: prompt` verdicts. Off by default: it doubles the guardian's work, and answers (on the
    results topic) are what users see; turn it on to catch injection attempts as they arrive."""

    guardian_prompt_consumer_group: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$", max_length=255)
    """Consumer group on the request topics; default `<topic_prefix>-guardian-prompts`."""

    guardian_pii_enabled: bool = True
    """Run the cheap, validated PII patterns (e-mail, phone, card, IBAN, US SSN, IP address)."""

    guardian_pii_ner_enabled: bool = True
    """Run spaCy named-entity recognition for person names (`pii.person`; expensive)."""

    guardian_secrets_enabled: bool = True
    """Run the secret detectors (cloud keys, private keys, tokens, passwords, high entropy)."""

    guardian_secrets_high_entropy: bool = True
    """Also report unknown high-entropy strings (`secret.high_entropy`), not only known formats."""

    guardian_injection_phrases_enabled: bool = True
    """Run the cheap injection/jailbreak phrase patterns."""

    guardian_semantic_enabled: bool = True
    """Run the embedding-based injection, jailbreak and harm (S1-S14) detector (expensive)."""

    guardian_semantic_int8: bool = True
    """Run the sentence encoder's Linear layers as dynamic int8: about 2.8x faster on CPU with the
    same dev-split accuracy (the thresholds below were tuned on int8 vectors); off: fp32."""

    guardian_semantic_injection_threshold: float = Field(0.44, ge=0.0, le=1.0)
    """Cosine similarity to injection/jailbreak exemplars from which a text is reported."""

    guardian_semantic_harm_threshold: float = Field(HARM_FLOOR, ge=0.0, le=1.0)
    """Cosine similarity to harm exemplars below which a text is never reported as harm."""

    guardian_semantic_margin: float = Field(0.06, ge=0.0, le=1.0)
    """How much nearer an injection/jailbreak exemplar must be than the nearest benign ones."""

    guardian_semantic_harm_margin: float = Field(HARM_MARGIN, ge=0.0, le=3.0)
    """Least (similarity to the harm exemplar - similarity to the nearest benign ones +
    `guardian_semantic_harm_head_weight` x the harm head's probability) for a harm finding.
    Default (with the threshold and weight): chosen by `services/guardian/harm_head_training.py`,
    cross-validated on the dev split and the project's extra training texts."""

    guardian_semantic_harm_head_weight: float = Field(HARM_HEAD_WEIGHT, ge=0.0, le=2.0)
    """Weight of the trained harm head's probability (`harm_head.npz`: a logistic regression over
    the text's words and its MiniLM vector) in the harm decision. 0 decides by the exemplars alone
    and never reads the weights file (the exemplar-only values of the previous release: threshold
    0.48, margin 0.08)."""

    guardian_policy_banned_terms: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = Field(
        (), max_length=10_000
    )
    """Tenant policy: words or phrases reported as `policy.banned_term` (case-insensitive, whole
    words), as a JSON list: `LGC_GUARDIAN_POLICY_BANNED_TERMS='["project falcon", "acme"]'`."""

    guardian_policy_patterns: dict[str, str] = Field({}, max_length=1_000)
    """Tenant policy: rule name -> regular expression, each match reported as `policy.<name>`, as a
    JSON object: `LGC_GUARDIAN_POLICY_PATTERNS='{"ticket_id": "TCK-\\\\d{6}"}'`. Names are
    `[a-z0-9_]` (at most 64); patterns must compile and run with a time limit per text."""

    @field_validator("guardian_policy_patterns")
    @classmethod
    def _policy_patterns_compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            compile_policy_pattern(name, pattern)  # ValueError naming the rule and the problem
        return patterns

    @property
    def consumer_group(self) -> str:
        """The consumer group actually used."""
        return self.guardian_consumer_group or f"{self.topic_prefix}-guardian"

    @property
    def prompt_consumer_group(self) -> str:
        """The consumer group actually used on the request topics."""
        return self.guardian_prompt_consumer_group or f"{self.topic_prefix}-guardian-prompts"

    @model_validator(mode="after")
    def _sample_lags_ordered(self) -> Self:
        if self.guardian_sample_lag_high <= self.guardian_sample_lag_low:
            raise ValueError("guardian_sample_lag_high must be above guardian_sample_lag_low")
        return self
