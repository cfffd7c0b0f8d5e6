"""build_detectors: what the guardian's settings enable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.guardian.detector_catalog import build_detectors, load_detectors
from services.guardian.policy_detector import PolicyDetector
from services.guardian.semantic_detector import SemanticSafetyDetector
from services.guardian.settings import GuardianSettings


def ids(settings: GuardianSettings) -> list[str]:
    return [d.detector_id for d in build_detectors(settings)]


def test_defaults_enable_every_family_cheap_ones_first() -> None:
    detectors = build_detectors(GuardianSettings())
    assert [d.detector_id for d in detectors] == [
        "pii-patterns@2",
        "secrets@1",
        "injection-phrases@2",
        "pii-person-ner@1",
        "semantic-safety@3",
    ]
    assert [d.cost for d in detectors] == ["cheap", "cheap", "cheap", "expensive", "expensive"]


def test_each_flag_removes_its_detector() -> None:
    assert "pii-patterns@2" not in ids(GuardianSettings(guardian_pii_enabled=False))
    assert "pii-person-ner@1" not in ids(GuardianSettings(guardian_pii_ner_enabled=False))
    assert "secrets@1" not in ids(GuardianSettings(guardian_secrets_enabled=False))
    assert "injection-phrases@2" not in ids(GuardianSettings(guardian_injection_phrases_enabled=False))
    assert "semantic-safety@3" not in ids(GuardianSettings(guardian_semantic_enabled=False))


def test_cheap_only_configuration_loads_nothing_heavy() -> None:
    settings = GuardianSettings(guardian_pii_ner_enabled=False, guardian_semantic_enabled=False)
    detectors = build_detectors(settings)
    assert {d.cost for d in detectors} == {"cheap"}
    load_detectors(detectors)  # no model to load: returns at once
    assert detectors[0].detect("a@example.com", "prompt")[0].category == "pii.email"


def test_policy_detector_appears_when_configured() -> None:
    settings = GuardianSettings(guardian_policy_banned_terms=("acme",), guardian_policy_patterns={"ticket": r"T-\d+"})
    [policy] = [d for d in build_detectors(settings) if isinstance(d, PolicyDetector)]
    assert {f.category for f in policy.detect("acme T-42", "prompt")} == {"policy.banned_term", "policy.ticket"}


def test_semantic_thresholds_come_from_settings() -> None:
    settings = GuardianSettings(
        guardian_semantic_injection_threshold=0.7,
        guardian_semantic_harm_threshold=0.6,
        guardian_semantic_margin=0.1,
        guardian_semantic_harm_margin=0.9,
        guardian_semantic_harm_head_weight=1.5,
    )
    [semantic] = [d for d in build_detectors(settings) if isinstance(d, SemanticSafetyDetector)]
    assert (semantic.thresholds.injection, semantic.thresholds.harm, semantic.thresholds.margin) == (0.7, 0.6, 0.1)
    assert (semantic.thresholds.harm_margin, semantic.thresholds.harm_head_weight) == (0.9, 1.5)
    assert semantic.encoder.int8  # the default; thresholds were tuned on int8 vectors
    fp32 = GuardianSettings(guardian_semantic_int8=False)
    [semantic] = [d for d in build_detectors(fp32) if isinstance(d, SemanticSafetyDetector)]
    assert not semantic.encoder.int8


def test_policy_settings_are_validated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGC_GUARDIAN_POLICY_BANNED_TERMS", '["project falcon"]')
    monkeypatch.setenv("LGC_GUARDIAN_POLICY_PATTERNS", '{"ticket_id": "TCK-\\\\d{6}"}')
    settings = GuardianSettings()
    assert settings.guardian_policy_banned_terms == ("project falcon",)
    assert settings.guardian_policy_patterns == {"ticket_id": r"TCK-\d{6}"}
    monkeypatch.setenv("LGC_GUARDIAN_POLICY_PATTERNS", '{"ticket id": "x("}')
    with pytest.raises(ValidationError, match="ticket id"):
        GuardianSettings()
