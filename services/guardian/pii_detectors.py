"""PII detectors: e-mail addresses and payment card numbers (Luhn-validated).

The patterns are anchored with look-behinds so a match can only start at the beginning of a run of
address or digit characters; that keeps them linear on long texts (no quadratic rescans).
"""

from __future__ import annotations

import re

from services.guardian.findings import Finding, TextKind

__all__ = ["CreditCardDetector", "EmailDetector", "luhn_valid"]

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}"  # local part, starting at the start of a run
    r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"  # domain with a TLD
)
#: 13 to 19 digits, optionally grouped by single spaces or dashes, and not part of a longer run of
#: (grouped) digits, so a 24-digit reference number never yields a "card" from its middle.
_CARD = re.compile(r"(?<![\d-])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?!\d|[ -]\d)")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check used by every payment card number."""
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _known_issuer(digits: str) -> bool:
    """Whether the number starts like, and is as long as, a card of a major network."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16  # Mastercard
    if two in (34, 37):
        return n == 15  # American Express
    if digits.startswith("6011") or two == 65 or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19  # Discover
    if 3528 <= four <= 3589:
        return 16 <= n <= 19  # JCB
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19  # Diners Club
    return False


class EmailDetector:
    """E-mail addresses."""

    name = "pii-email"
    version = "1"
    category = "pii.email"

    @property
    def detector_id(self) -> str:
        return f"{self.name}@{self.version}"

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        return [
            Finding(self.category, 0.95, self.detector_id, m.start(), m.end(), "[REDACTED_EMAIL]")
            for m in _EMAIL.finditer(text)
        ]


class CreditCardDetector:
    """Payment card numbers: 13-19 digits (spaces or dashes allowed) that pass the Luhn check.

    A Luhn-valid number with a major network's prefix and length scores 0.95; any other Luhn-valid
    number 0.7 (one random 16-digit number in ten passes Luhn, so those are less certain).
    """

    name = "pii-credit-card"
    version = "1"
    category = "pii.credit_card"

    @property
    def detector_id(self) -> str:
        return f"{self.name}@{self.version}"

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        findings = []
        for m in _CARD.finditer(text):
            digits = re.sub(r"[ -]", "", m.group())
            if luhn_valid(digits):
                score = 0.95 if _known_issuer(digits) else 0.7
                findings.append(
                    Finding(self.category, score, self.detector_id, m.start(), m.end(), "[REDACTED_CREDIT_CARD]")
                )
        return findings
