"""Person names by spaCy NER (the real en_core_web_sm model, loaded once for the module)."""

from __future__ import annotations

import pytest

from services.guardian.person_detector import LONE_WORD_SCORE, PersonNameDetector, may_hold_name


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The cat sat down. The dog barked!", False),  # capitals only open sentences
        ("I think so. I'm sure I've seen it.", False),  # the pronoun I
        ("Use the iPhone app and macOS.", False),  # capitals inside words
        ('"Quoted" words and - Listed items', False),
        ("Please call Maria Garcia today.", True),
        ("He met Sam at noon.", True),
        ("Dr. Smith will see you.", True),  # a title
        ("Hello there.", True),  # a greeting can precede a one-word name
    ],
)
def test_may_hold_name_rules_out_only_sentence_openers(text: str, expected: bool) -> None:
    assert may_hold_name(text) is expected


def test_texts_without_names_skip_the_model_only_above_the_lone_word_score(detector: PersonNameDetector) -> None:
    texts = ["Maria met friends. It rained.", "Please call Maria Garcia today.", "Sam called."]
    skipping = PersonNameDetector(min_score=0.5)
    strict = PersonNameDetector(min_score=0.0)
    assert skipping.skip_plain and not strict.skip_plain
    full = strict.detect_many(texts, "response")
    fast = skipping.detect_many(texts, "response")
    # every finding that reaches the caller's minimum score is the same; only lone sentence-start
    # words (scored LONE_WORD_SCORE) can be missing
    assert [[f for f in r if f.score >= 0.5] for r in fast] == [[f for f in r if f.score >= 0.5] for r in full]
    assert fast[1] and fast[1][0].score == 0.85
    assert all(f.score == LONE_WORD_SCORE for r in full for f in r if f not in [g for s in fast for g in s])
