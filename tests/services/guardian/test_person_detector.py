"""Person names by spaCy NER (the real en_core_web_sm model, loaded once for the module)."""

from __future__ import annotations

import pytest

from services.guardian.person_detector import PersonNameDetector


@pytest.fixture(scope="module")
def detector() -> PersonNameDetector:
    d = PersonNameDetector()
    d.load()
    return d


def names(detector: PersonNameDetector, text: str) -> list[str]:
    return [text[f.start : f.end] for f in detector.detect(text, "response") if f.score >= 0.5]


def test_full_names_are_found_and_redacted_as_person(detector: PersonNameDetector) -> None:
    text = "Please forward the proposal to Maria Gonzalez before Friday."
    [finding] = detector.detect(text, "response")
    assert text[finding.start : finding.end] == "Maria Gonzalez"
    assert (finding.category, finding.placeholder, finding.score) == ("pii.person", "<PERSON>", 0.85)


def test_a_single_name_counts_after_a_title_or_greeting(detector: PersonNameDetector) -> None:
    assert "Chen" in names(detector, "Please ask Dr. Chen about the results.")


@pytest.mark.parametrize(
    "text",
    ["Kill the process and restart nginx.", "aws_access_key_id = AKIAW4Z325CGRKFXGHV9", "What is the capital of Australia?"],
)
def test_no_names_in_commands_keys_or_questions(detector: PersonNameDetector, text: str) -> None:
    assert names(detector, text) == []


def test_detect_many_batches_and_keeps_order(detector: PersonNameDetector) -> None:
    results = detector.detect_many(["No names here.", "James Smith called.", ""], "prompt")
    assert [len(r) for r in results] == [0, 1, 0]
    assert detector.cost == "expensive"
