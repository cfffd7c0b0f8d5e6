"""The one place that turns findings into an action: `block`, `redact`, `flag` or `allow`.

Rules, strongest first (a verdict takes the strongest action any of its findings asks for):

* `block`: a `harm.*` finding scored at or above `block_threshold`; a finding whose category is in
  `block_categories` (by default `secret.private_key`: a leaked private key cannot be made safe by
  masking a span of it); a `policy.*` finding when `policy_action` is `block`.
* `redact`: a finding that carries a placeholder (PII, secrets): the verdict's `redacted_text` has
  every such span replaced.
* `flag`: any other finding: `injection`, `jailbreak`, `harm.*` below the block threshold,
  `policy.*` when `policy_action` is `flag`.
* `allow`: no finding at or above `min_score` (weaker findings are ignored altogether).

Pure and synchronous; the evaluator calls it once per text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.guardian.findings import Finding
from shared.records import CategoryScore, VerdictAction

__all__ = ["ActionPolicy", "Decision", "redact"]

_RANK = {VerdictAction.ALLOW: 0, VerdictAction.FLAG: 1, VerdictAction.REDACT: 2, VerdictAction.BLOCK: 3}


def redact(text: str, findings: Iterable[Finding]) -> str:
    """`text` with every redactable finding's span replaced by its placeholder; overlapping spans
    are merged (the earliest finding's placeholder is used)."""
    spans = sorted((f.start, f.end, f.placeholder) for f in findings if f.placeholder is not None)
    out: list[str] = []
    pos = 0
    for start, end, placeholder in spans:
        if start < pos:  # overlaps the previous span: extend it
            pos = max(pos, end)
            continue
        out.append(text[pos:start])
        out.append(placeholder or "")
        pos = end
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy made of one text's findings."""

    action: VerdictAction
    categories: tuple[CategoryScore, ...]
    """The best-scored finding per category, sorted by category."""
    redacted_text: str | None
    """The text with redactable spans replaced (whenever there is one, blocked or not)."""
    findings: tuple[Finding, ...]
    """The findings that counted (at or above the minimum score)."""


@dataclass(frozen=True, slots=True)
class ActionPolicy:
    """Thresholds and switches of the decision (from the guardian's settings)."""

    min_score: float = 0.5
    block_threshold: float = 0.8
    block_categories: frozenset[str] = field(default_factory=lambda: frozenset({"secret.private_key"}))
    policy_action: Literal["block", "flag"] = "block"

    @property
    def fingerprint(self) -> str:
        """Everything that changes decisions, as text (part of the verdict cache's version)."""
        return (
            f"min={self.min_score};block={self.block_threshold};"
            f"cats={','.join(sorted(self.block_categories))};policy={self.policy_action}"
        )

    def action_for(self, finding: Finding) -> VerdictAction:
        """The action one finding asks for on its own."""
        category = finding.category
        if category in self.block_categories:
            return VerdictAction.BLOCK
        if category.startswith("harm.") and finding.score >= self.block_threshold:
            return VerdictAction.BLOCK
        if category.startswith("policy."):
            return VerdictAction.BLOCK if self.policy_action == "block" else VerdictAction.FLAG
        if finding.placeholder is not None:
            return VerdictAction.REDACT
        return VerdictAction.FLAG

    def decide(self, text: str, findings: Sequence[Finding]) -> Decision:
        """The verdict's action, categories and redacted text for `findings` in `text`."""
        kept = tuple(f for f in findings if f.score >= self.min_score)
        action = VerdictAction.ALLOW
        best: dict[str, Finding] = {}
        for f in kept:
            wanted = self.action_for(f)
            if _RANK[wanted] > _RANK[action]:
                action = wanted
            if f.category not in best or f.score > best[f.category].score:
                best[f.category] = f
        redactable = any(f.placeholder is not None for f in kept)
        categories = tuple(
            CategoryScore(category=c, score=f.score, detector=f.detector) for c, f in sorted(best.items())
        )
        return Decision(action, categories, redact(text, kept) if redactable else None, kept)
