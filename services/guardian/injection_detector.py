"""A tiny prompt-injection check: well-known phrases that try to override a model's instructions.

Phrase lists catch the copy-pasted attacks, not paraphrases; a later detector (a classifier) is
meant to complement it. It only flags, it never redacts.
"""

from __future__ import annotations

import re

from services.guardian.findings import Finding, TextKind

__all__ = ["PromptInjectionDetector"]

_PHRASES = re.compile(
    r"\b(?:"
    r"(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+|my\s+)*"
    r"(?:previous|prior|above|earlier|preceding|system)\s+(?:instructions|prompts?|rules|directions|messages)"
    r"|(?:reveal|print|show|repeat|leak)\s+(?:me\s+)?(?:your|the)\s+"
    r"(?:system\s+prompt|hidden\s+instructions|initial\s+instructions)"
    r"|you\s+are\s+now\s+(?:dan|in\s+developer\s+mode|unrestricted|jailbroken)"
    r"|(?:enable|enter|activate)\s+(?:developer|dan|god)\s+mode"
    r"|do\s+anything\s+now"
    r"|pretend\s+(?:that\s+)?you\s+(?:have|are\s+under)\s+no\s+(?:rules|restrictions|guidelines)"
    r")\b",
    re.IGNORECASE,
)


class PromptInjectionDetector:
    """Known instruction-override phrases (case-insensitive, any whitespace between words)."""

    name = "injection-phrases"
    version = "1"
    category = "injection"

    @property
    def detector_id(self) -> str:
        return f"{self.name}@{self.version}"

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        # In a prompt such a phrase is an attack; in a response it usually means the model is
        # quoting or echoing one, which is worth a look but less certain.
        score = 0.8 if kind == "prompt" else 0.6
        return [Finding(self.category, score, self.detector_id, m.start(), m.end()) for m in _PHRASES.finditer(text)]
