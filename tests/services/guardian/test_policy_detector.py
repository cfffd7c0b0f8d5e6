"""Tenant policy: banned terms and named patterns."""

from __future__ import annotations

import pytest

from services.guardian.policy_detector import PolicyDetector, compile_policy_pattern


def test_banned_terms_match_whole_words_case_insensitively() -> None:
    d = PolicyDetector(["Project Falcon", "acme"])
    text = "About project falcon and ACME corp; acmes and falconry are fine."
    assert [(text[f.start : f.end], f.category) for f in d.detect(text, "prompt")] == [
        ("project falcon", "policy.banned_term"),
        ("ACME", "policy.banned_term"),
    ]


def test_named_patterns_report_their_rule() -> None:
    d = PolicyDetector(patterns={"ticket_id": r"TCK-\d{6}"})
    [finding] = d.detect("see TCK-123456 and TCK-12", "response")
    assert (finding.category, finding.score, finding.placeholder) == ("policy.ticket_id", 0.9, None)


def test_empty_policy_is_empty_and_blank_terms_are_ignored() -> None:
    assert PolicyDetector().empty and PolicyDetector(["  "]).empty
    assert not PolicyDetector(["x"]).empty
    assert PolicyDetector().detect("anything", "prompt") == []


@pytest.mark.parametrize(("name", "pattern", "error"), [("Bad Name", "x", "must match"), ("ok", "x(", "invalid regular")])
def test_bad_rules_are_refused_with_the_rule_named(name: str, pattern: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        compile_policy_pattern(name, pattern)


def test_a_pathological_pattern_is_cut_off_not_hung() -> None:
    d = PolicyDetector(patterns={"slow": r"(a|aa)+$", "fine": r"b"})
    findings = d.detect("a" * 60 + "!b", "prompt")
    assert [f.category for f in findings] == ["policy.fine"]
