"""Tenant policy: banned terms and named regular expressions from the guardian's settings.

Terms match case-insensitively as whole words (`policy.banned_term`); each pattern `name -> regex`
reports its matches as `policy.<name>`. Patterns come from operators, so they run on the `regex`
package (Apache-2.0, already used by Presidio) with a time limit per text: a pattern that
backtracks catastrophically is cut off instead of stalling the guardian. Findings only flag
(no placeholder); the pipeline decides what a policy hit does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import regex

from services.guardian.detector_base import LoopingDetector
from services.guardian.findings import Finding, TextKind

__all__ = ["POLICY_RULE_NAME", "PolicyDetector", "compile_policy_pattern"]

log = logging.getLogger(__name__)

#: What a pattern's rule name may look like (it becomes the category `policy.<name>`).
POLICY_RULE_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
#: Longest a pattern may search one text.
PATTERN_TIMEOUT_S = 0.05


def compile_policy_pattern(name: str, pattern: str) -> regex.Pattern[str]:
    """The compiled pattern, or ValueError naming the rule and the problem."""
    if not POLICY_RULE_NAME.match(name):
        raise ValueError(f"policy rule name {name!r} must match {POLICY_RULE_NAME.pattern}")
    try:
        return regex.compile(pattern, regex.IGNORECASE | regex.V0)
    except regex.error as exc:
        raise ValueError(f"policy rule {name!r}: invalid regular expression: {exc}") from exc


class PolicyDetector(LoopingDetector):
    """Banned terms and named patterns of the tenant policy."""

    name = "policy"
    version = "1"
    cost = "cheap"

    def __init__(self, banned_terms: Sequence[str] = (), patterns: Mapping[str, str] | None = None) -> None:
        terms = sorted({t.strip() for t in banned_terms if t.strip()}, key=len, reverse=True)
        self._terms = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms) + r")(?!\w)", re.IGNORECASE)
            if terms
            else None
        )
        self._patterns = {name: compile_policy_pattern(name, p) for name, p in (patterns or {}).items()}

    @property
    def empty(self) -> bool:
        """True when there is nothing to check (no terms, no patterns)."""
        return self._terms is None and not self._patterns

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        findings: list[Finding] = []
        if self._terms is not None:
            findings += [
                Finding("policy.banned_term", 0.9, self.detector_id, m.start(), m.end())
                for m in self._terms.finditer(text)
            ]
        for name, pattern in self._patterns.items():
            try:
                findings += [
                    Finding(f"policy.{name}", 0.9, self.detector_id, m.start(), m.end())
                    for m in pattern.finditer(text, timeout=PATTERN_TIMEOUT_S)
                    if m.end() > m.start()
                ]
            except TimeoutError:
                # Safe to skip: the rule is the operator's and pathological on this text; the other
                # rules and detectors still run, and the log says which rule to fix.
                log.warning("policy rule %s timed out on a text of %d characters", name, len(text))
        return findings
