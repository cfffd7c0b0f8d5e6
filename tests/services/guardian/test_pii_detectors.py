"""The cheap, validated PII patterns (Presidio recognizers + libphonenumber)."""

from __future__ import annotations

import pytest

from services.guardian.pii_detectors import PLACEHOLDERS, PatternPiiDetector


@pytest.fixture(scope="module")
def detector() -> PatternPiiDetector:
    return PatternPiiDetector()


def found(detector: PatternPiiDetector, text: str) -> list[tuple[str, str]]:
    return [(text[f.start : f.end], f.category) for f in detector.detect(text, "response")]


@pytest.mark.parametrize(
    ("text", "span", "category"),
    [
        ("mail jane.doe+news@mail.example.co.uk today", "jane.doe+news@mail.example.co.uk", "pii.email"),
        ("card 4111 1111 1111 1111, exp 09/28", "4111 1111 1111 1111", "pii.credit_card"),
        ("amex 3782-822463-10005.", "3782-822463-10005", "pii.credit_card"),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "GB82 WEST 1234 5698 7654 32", "pii.iban"),
        ("pay to DE89370400440532013000", "DE89370400440532013000", "pii.iban"),
        ("SSN 536-22-1234 on file", "536-22-1234", "pii.us_ssn"),
        ("my social security number is 536221234", "536221234", "pii.us_ssn"),
        ("call (212) 555-7890 tonight", "(212) 555-7890", "pii.phone"),
        ("ring +44 20 7946 0958", "+44 20 7946 0958", "pii.phone"),
        ("login from 203.0.113.77 at noon", "203.0.113.77", "pii.ip_address"),
        ("v6 2001:db8::8a2e:370:7334 seen", "2001:db8::8a2e:370:7334", "pii.ip_address"),
    ],
)
def test_valid_identifiers_are_found(detector: PatternPiiDetector, text: str, span: str, category: str) -> None:
    assert (span, category) in found(detector, text)


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112",  # Luhn fails
        "code GB83 WEST 1234 5698 7654 32",  # mod-97 fails
        "part 900-12-3456 and 666-12-3456 and 000-12-3456",  # areas never issued
        "lot 536-00-1234",  # group 00
        "ticket (123) 456-7890",  # no such area code
        "upgrade to version 3.11.7 or 2.7.18",
        "born on 2024-01-15, order #12345678",
        "tag @nightowl or write to name@domain",
        "kill the process 4321 and restart",
    ],
)
def test_look_alikes_are_not_reported(detector: PatternPiiDetector, text: str) -> None:
    assert [f for f in detector.detect(text, "prompt") if f.score >= 0.5] == []


def test_a_bare_nine_digit_run_is_an_ssn_only_with_context(detector: PatternPiiDetector) -> None:
    assert found(detector, "invoice 536221234 paid") == []
    assert found(detector, "SSN: 536221234") == [("536221234", "pii.us_ssn")]


def test_loopback_addresses_score_below_the_default_minimum(detector: PatternPiiDetector) -> None:
    [finding] = detector.detect("connect to 127.0.0.1", "response")
    assert finding.category == "pii.ip_address" and finding.score < 0.5


def test_every_finding_carries_its_placeholder_and_cost_is_cheap(detector: PatternPiiDetector) -> None:
    findings = detector.detect("a@example.com 4111111111111111 536-22-1234", "response")
    assert {f.placeholder for f in findings} == {"<EMAIL>", "<CREDIT_CARD>", "<US_SSN>"}
    assert all(f.placeholder == PLACEHOLDERS[f.category] for f in findings)
    assert detector.cost == "cheap" and detector.detector_id == "pii-patterns@2"


def test_a_card_is_not_also_reported_as_a_phone_number(detector: PatternPiiDetector) -> None:
    assert [c for _, c in found(detector, "card 4111111111111111")] == ["pii.credit_card"]


def test_categories_can_be_restricted_and_unknown_ones_refused() -> None:
    only_email = PatternPiiDetector(categories=("pii.email",))
    assert [f.category for f in only_email.detect("a@example.com 4111111111111111", "prompt")] == ["pii.email"]
    with pytest.raises(ValueError, match="unknown PII categories"):
        PatternPiiDetector(categories=("pii.dna",))


def test_detect_many_matches_detect(detector: PatternPiiDetector) -> None:
    texts = ["a@example.com", "nothing here", "SSN 536-22-1234"]
    assert detector.detect_many(texts, "prompt") == [detector.detect(t, "prompt") for t in texts]


#: Inputs that make naive patterns backtrack or produce thousands of overlapping matches (Presidio's
#: own e-mail pattern took 12 s on 10 k characters of "x.x.x...@"; pairwise overlap removal 5 s on
#: "1.1.1.1..."). The assertion is that they return at all, with sane findings.
HOSTILE = ["a" * 100_000, "1 " * 50_000, "1." * 50_000, "a@" * 50_000, ("x." * 50_000) + "@"]


@pytest.mark.parametrize("text", HOSTILE, ids=["letters", "digits-spaces", "digits-dots", "at-signs", "dotted-email"])
def test_hostile_inputs_finish(detector: PatternPiiDetector, text: str) -> None:
    findings = detector.detect(text, "response")
    assert all(f.category in PLACEHOLDERS for f in findings)
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:], strict=False))  # no overlaps
