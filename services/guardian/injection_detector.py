"""Cheap prompt-injection and jailbreak check: well-known phrases that try to override a model's
instructions (`injection`) or switch off its safety rules (`jailbreak`).

Phrase lists catch the copy-pasted attacks, not paraphrases; the semantic detector
(`semantic_detector`) complements them. The phrases name what is overridden (instructions, system
prompt, rules), so everyday wording such as "ignore the previous email" or "forget my earlier
message" does not match. It only flags, it never redacts.
"""

from __future__ import annotations

import re

from services.guardian.detector_base import LoopingDetector
from services.guardian.findings import Finding, TextKind

__all__ = ["PromptInjectionDetector"]

_ANY = r"(?:\s+(?:all|any|of|the|your|these|those|my|its|every|previous|prior|above|earlier|preceding|initial|original|system|developer|other|safety|and|,)){0,5}"
_INJECTION = re.compile(
    r"\b(?:"
    rf"(?:ignore|disregard|forget|override|bypass|discard|drop|skip)\b{_ANY}\s+"
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|constraints|programming|system\s+messages?)"
    r"|(?:reveal|print|show|repeat|leak|output|display|dump|tell\s+me|give\s+me|what\s+(?:is|are))\s+(?:me\s+)?(?:all\s+)?(?:your|the)\s+"
    r"(?:(?:full|exact|original|initial|hidden|secret|internal)\s+)?(?:system\s+prompt|hidden\s+instructions|initial\s+instructions|system\s+message|pre-?prompt|instructions\s+above)"
    r"|(?:new|updated|real)\s+(?:system\s+)?instructions\s*(?::|follow\b|below\b|are\s+as\s+follows)"
    r"|system\s+(?:override|prompt\s+override)"
    r"|(?:your|the)\s+(?:previous|prior|old)\s+instructions\s+(?:are|were)\s+(?:void|cancelled|canceled|revoked|no\s+longer)"
    r"|from\s+now\s+on,?\s+(?:you\s+will\s+)?(?:ignore|disregard)\b"
    # indirect injection: text addressed to the model inside a document it is asked to process
    r"|(?:note|message|instructions?|command)\s+(?:for|to)\s+(?:the\s+|any\s+)?(?:ai|model|assistant|llm|chatbot|agent)s?(?:\s+(?:models?|assistants?|agents?|systems?))?\s*(?::|\b(?:reading|processing|summari[sz]ing)\b)"
    r"|if\s+you\s+are\s+an?\s+(?:ai|language\s+model|llm|assistant|chatbot)\b"
    r"|(?:ai|dear)\s+assistant\s*[:,]\s*(?:ignore|disregard|forget|stop)\b"
    r"|(?:ignore|disregard)\s+the\s+user'?s?\s+(?:request|question|instructions|task)"
    r")"
    # chat-template tokens pasted into a text to fake a system turn (no word boundary before `<`)
    r"|<\s*/?\s*(?:system|im_start|im_end)\s*>|\[/?INST\]|###\s*(?:system|instruction)\s*:",
    re.IGNORECASE,
)
_JAILBREAK = re.compile(
    r"\b(?:"
    r"you\s+are\s+now\s+(?:dan|in\s+(?:developer|god|jailbreak|unrestricted)\s+mode|unrestricted|unfiltered|uncensored|jailbroken|free\s+from)"
    r"|(?:enable|enter|activate|switch\s+to)\s+(?:developer|dan|god|jailbreak|unrestricted|evil)\s+mode"
    r"|do\s+anything\s+now|\bDAN\s+mode|jailbreak(?:ed|ing)?\s+(?:mode|prompt|yourself)"
    r"|(?:pretend|imagine|act\s+as\s+if)\s+(?:that\s+)?you\s+(?:have|had|are\s+under|were\s+under)\s+no\s+(?:rules|restrictions|guidelines|filters|limits|content\s+polic(?:y|ies))"
    r"|(?:without|free\s+of|with\s+no)\s+(?:any\s+)?(?:ethical\s+|moral\s+|safety\s+|content\s+)+(?:guidelines|restrictions|filters|limits|constraints|boundaries)"
    r"|(?:an?\s+)?(?:ai|assistant|model|chatbot)\s+(?:with|that\s+has)\s+no\s+(?:rules|restrictions|filters|guidelines|morals|limits)"
    r"|stay\s+in\s+character\s+(?:no\s+matter|whatever)"
    r"|(?:opposite|evil|unfiltered|uncensored)\s+(?:mode|twin|version\s+of\s+(?:you|yourself))"
    r")",
    re.IGNORECASE,
)


class PromptInjectionDetector(LoopingDetector):
    """Known instruction-override and jailbreak phrases (case-insensitive, any whitespace)."""

    name = "injection-phrases"
    version = "2"
    cost = "cheap"

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        # In a prompt such a phrase is an attack; in a response it usually means the model is
        # quoting or echoing one, which is worth a look but less certain.
        score = 0.85 if kind == "prompt" else 0.6
        return [
            Finding(category, score, self.detector_id, m.start(), m.end())
            for category, pattern in (("injection", _INJECTION), ("jailbreak", _JAILBREAK))
            for m in pattern.finditer(text)
        ]
