"""The action policy: block > redact > flag > allow, with thresholds and categories."""

from __future__ import annotations

import pytest

from services.guardian.findings import Finding
from services.guardian.verdict_policy import ActionPolicy, redact
from shared.records import VerdictAction


def _f(category: str, score: float = 0.9, placeholder: str | None = None, start: int = 0, end: int = 4) -> Finding:
    return Finding(category, score, "d@1", start, end, placeholder)


@pytest.mark.parametrize(
    "findings, action",
    [
        ([], VerdictAction.ALLOW),
        ([_f("injection")], VerdictAction.FLAG),
        ([_f("jailbreak")], VerdictAction.FLAG),
        ([_f("harm.S1", 0.79)], VerdictAction.FLAG),
        ([_f("harm.S1", 0.8)], VerdictAction.BLOCK),
        ([_f("pii.email", placeholder="[E]")], VerdictAction.REDACT),
        ([_f("secret.aws_access_key", placeholder="[S]")], VerdictAction.REDACT),
        ([_f("secret.private_key", placeholder="[K]")], VerdictAction.BLOCK),
        ([_f("policy.competitors")], VerdictAction.BLOCK),
        ([_f("injection"), _f("pii.email", placeholder="[E]")], VerdictAction.REDACT),
        ([_f("pii.email", placeholder="[E]"), _f("harm.S10", 0.95)], VerdictAction.BLOCK),
        ([_f("harm.S1", 0.3)], VerdictAction.ALLOW),  # below min_score: ignored
    ],
)
def test_strongest_action_wins(findings: list[Finding], action: VerdictAction) -> None:
    assert ActionPolicy().decide("abcdefgh", findings).action is action


def test_policy_findings_can_be_made_flags_and_thresholds_move() -> None:
    policy = ActionPolicy(policy_action="flag", block_threshold=0.95, block_categories=frozenset())
    assert policy.decide("x", [_f("policy.topic")]).action is VerdictAction.FLAG
    assert policy.decide("x", [_f("harm.S1", 0.9)]).action is VerdictAction.FLAG
    assert policy.decide("x", [_f("secret.private_key", placeholder="[K]")]).action is VerdictAction.REDACT
    assert policy.fingerprint != ActionPolicy().fingerprint


def test_categories_keep_the_best_score_and_blocked_texts_still_get_a_redaction() -> None:
    decision = ActionPolicy().decide(
        "mail a@b.c now",
        [_f("pii.email", 0.7, "[E]", 5, 10), _f("pii.email", 0.95, "[E]", 5, 10), _f("harm.S2", 0.99, None, 0, 4)],
    )
    assert decision.action is VerdictAction.BLOCK
    assert [(c.category, c.score) for c in decision.categories] == [("harm.S2", 0.99), ("pii.email", 0.95)]
    assert decision.redacted_text == "mail [E] now"
    assert len(decision.findings) == 3


def test_overlapping_spans_are_redacted_once() -> None:
    findings = [_f("a", 1.0, "[A]", 2, 6), _f("b", 1.0, "[B]", 4, 9), _f("c", 1.0, None, 0, 1)]
    assert redact("0123456789", findings) == "01[A]9"
