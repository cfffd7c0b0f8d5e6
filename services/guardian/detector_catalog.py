"""Which detectors the guardian runs, built from its settings.

| detector | cost | categories | setting |
| --- | --- | --- | --- |
| `pii-patterns` | cheap | `pii.email` `pii.phone` `pii.credit_card` `pii.iban` `pii.us_ssn` `pii.ip_address` | `guardian_pii_enabled` |
| `pii-person-ner` | expensive | `pii.person` | `guardian_pii_ner_enabled` |
| `secrets` | cheap | `secret.*` | `guardian_secrets_enabled` (+ `guardian_secrets_high_entropy`) |
| `injection-phrases` | cheap | `injection` `jailbreak` | `guardian_injection_phrases_enabled` |
| `semantic-safety` | expensive | `injection` `jailbreak` `harm.S1`...`harm.S14` | `guardian_semantic_enabled` (+ `guardian_semantic_int8`, thresholds, harm head weight) |
| `policy` | cheap | `policy.banned_term` `policy.<rule>` | present when terms or patterns are configured |

Building is cheap: models load on first use (or when the caller calls `load_detectors`).
"""

from __future__ import annotations

from services.guardian.findings import Detector
from services.guardian.injection_detector import PromptInjectionDetector
from services.guardian.person_detector import PersonNameDetector
from services.guardian.pii_detectors import PatternPiiDetector
from services.guardian.policy_detector import PolicyDetector
from services.guardian.secret_detectors import SecretDetector
from services.guardian.semantic_detector import SemanticSafetyDetector, SemanticThresholds
from services.guardian.sentence_encoder import SentenceEncoder
from services.guardian.settings import GuardianSettings

__all__ = ["build_detectors", "load_detectors"]


def build_detectors(settings: GuardianSettings) -> list[Detector]:
    """Every detector `settings` enables, cheap ones first."""
    detectors: list[Detector] = []
    if settings.guardian_pii_enabled:
        detectors.append(PatternPiiDetector())
    if settings.guardian_secrets_enabled:
        detectors.append(SecretDetector(high_entropy=settings.guardian_secrets_high_entropy))
    if settings.guardian_injection_phrases_enabled:
        detectors.append(PromptInjectionDetector())
    policy = PolicyDetector(settings.guardian_policy_banned_terms, settings.guardian_policy_patterns)
    if not policy.empty:
        detectors.append(policy)
    if settings.guardian_pii_ner_enabled:
        detectors.append(PersonNameDetector(min_score=settings.guardian_min_score))
    if settings.guardian_semantic_enabled:
        detectors.append(
            SemanticSafetyDetector(
                SentenceEncoder(int8=settings.guardian_semantic_int8, torch_threads=settings.guardian_torch_threads),
                thresholds=SemanticThresholds(
                    injection=settings.guardian_semantic_injection_threshold,
                    harm=settings.guardian_semantic_harm_threshold,
                    margin=settings.guardian_semantic_margin,
                    harm_margin=settings.guardian_semantic_harm_margin,
                    harm_head_weight=settings.guardian_semantic_harm_head_weight,
                ),
            )
        )
    return detectors


def load_detectors(detectors: list[Detector]) -> None:
    """Load every model-based detector's model now (blocking; call it off the event loop at
    start-up so the first texts do not wait seconds)."""
    for detector in detectors:
        load = getattr(detector, "load", None)
        if callable(load):
            load()
