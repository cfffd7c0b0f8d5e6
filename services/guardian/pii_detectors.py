"""Cheap PII detectors: validated patterns for e-mails, phone numbers, payment cards, IBANs, US SSNs
and IP addresses.

Built on Microsoft Presidio's pattern recognizers (MIT) called directly, without its NLP engine
(that is the expensive part, see `person_detector`), and on Google's libphonenumber port
`phonenumbers` (Apache-2.0); e-mail candidates come from a linear pattern of ours (Presidio's
backtracks on hostile input) validated like Presidio does. Every candidate is validated where a rule exists: cards by Luhn, IBANs
by country length and mod-97, SSNs by the SSA's issuing rules (area 000, 666 and 9xx, group 00 and
serial 0000 are never issued), IPs by `ipaddress`, phone numbers by libphonenumber's numbering
plans, e-mail domains by their public suffix (`tldextract`, from the snapshot shipped in its wheel:
its default would download the list).

Scores: checksum-validated identifiers 0.95; a well-formed SSN 0.85 (0.95 with "SSN"/"social
security" nearby; a bare 9-digit run counts only with such a word); a valid phone number 0.9 when
written like one (separators, a leading +, or "phone"/"call"/"tel" nearby), else 0.6; IPs 0.85
(loopback, unspecified and link-local addresses 0.3: not personal).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import phonenumbers
import tldextract
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    IbanRecognizer,
    IpRecognizer,
    UsSsnRecognizer,
)

from services.guardian.detector_base import LoopingDetector
from services.guardian.findings import Finding, TextKind
from services.guardian.pii_validation import iban_valid, known_card_issuer, luhn_valid, ssn_valid

__all__ = ["PII_CATEGORIES", "PLACEHOLDERS", "PatternPiiDetector", "luhn_valid"]

#: Category -> the placeholder that replaces it in redacted text.
PLACEHOLDERS: dict[str, str] = {
    "pii.email": "<EMAIL>",
    "pii.phone": "<PHONE>",
    "pii.credit_card": "<CREDIT_CARD>",
    "pii.iban": "<IBAN>",
    "pii.us_ssn": "<US_SSN>",
    "pii.ip_address": "<IP_ADDRESS>",
    "pii.person": "<PERSON>",
}
PII_CATEGORIES = tuple(PLACEHOLDERS)

_SSN_CONTEXT = re.compile(r"\b(?:ssn|ssns|social\s+security|soc\.?\s*sec)\b", re.IGNORECASE)
_PHONE_CONTEXT = re.compile(
    r"\b(?:phone|call|tel|telephone|mobile|cell|fax|whatsapp|text\s+me|dial|number)\b", re.IGNORECASE
)
#: A phone-number-shaped run: optional +country, optional (area), 2-4 digit groups. Candidates are
#: then parsed and validated by libphonenumber; the look-arounds keep a match from starting or
#: ending inside a longer number (a card, an IBAN).
_PHONE = re.compile(
    r"(?<![\w+@/.:-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,5}){1,4}(?![\w@/]|[.:-]\d)"
)
_CONTEXT_WINDOW = 40


class _EmailFinder:
    """E-mail addresses whose domain ends in a public suffix.

    Presidio's e-mail pattern backtracks quadratically on inputs like "x.x.x....@" (10 k characters
    took 12 s), so candidates come from a pattern anchored with look-behinds (a match can only start
    at the beginning of a run of address characters: linear), and the domain is validated the way
    Presidio's recognizer does it, with tldextract - from the suffix list shipped in its wheel, as
    its default would download the list.
    """

    _PATTERN = re.compile(
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}"
        r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
    )

    def __init__(self) -> None:
        self._extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        self._extract("warm.example.com")  # load the snapshot now, not racing on first use

    def find(self, text: str) -> list[tuple[int, int]]:
        return [
            m.span()
            for m in self._PATTERN.finditer(text)
            if self._extract(m.group().rsplit("@", 1)[1]).suffix
        ]


class _IssuableSsnRecognizer(UsSsnRecognizer):
    """Presidio's SSN recognizer, also refusing the 900-999 areas it lets through."""

    def invalidate_result(self, pattern_text: str) -> bool:
        return bool(super().invalidate_result(pattern_text)) or not ssn_valid(re.sub(r"\D", "", pattern_text))


@dataclass(frozen=True, slots=True)
class _Span:
    category: str
    score: float
    start: int
    end: int


def _near(pattern: re.Pattern[str], text: str, start: int, end: int) -> bool:
    return pattern.search(text, max(0, start - _CONTEXT_WINDOW), min(len(text), end + 10)) is not None


class PatternPiiDetector(LoopingDetector):
    """E-mail, phone, card, IBAN, SSN and IP addresses, each validated (see the module docstring)."""

    name = "pii-patterns"
    version = "2"
    cost = "cheap"

    def __init__(self, categories: tuple[str, ...] | None = None) -> None:
        """`categories`: the subset of `pii.*` to report (default all but `pii.person`)."""
        wanted = set(categories) if categories is not None else set(PII_CATEGORIES) - {"pii.person"}
        unknown = wanted - set(PII_CATEGORIES)
        if unknown:
            raise ValueError(f"unknown PII categories: {sorted(unknown)}")
        self.categories = frozenset(wanted)
        self._email = _EmailFinder()
        self._card = CreditCardRecognizer()
        self._iban = IbanRecognizer()
        self._ssn = _IssuableSsnRecognizer()
        self._ip = IpRecognizer()

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        spans: list[_Span] = []
        want = self.categories
        # Cheap pre-checks skip whole recognizers on texts that cannot hold their entity.
        if "pii.email" in want and "@" in text:
            spans += [_Span("pii.email", 0.95, s, e) for s, e in self._email.find(text)]
        has_digit = any(ch.isdigit() for ch in text)
        if has_digit:
            if "pii.credit_card" in want:
                spans += self._cards(text)
            if "pii.iban" in want:
                spans += [
                    _Span("pii.iban", 0.95, r.start, r.end)
                    for r in self._analyze(self._iban, text)
                    if iban_valid(text[r.start : r.end])
                ]
            if "pii.us_ssn" in want:
                spans += self._ssns(text)
            if "pii.ip_address" in want and ("." in text or ":" in text):
                spans += self._ips(text)
            if "pii.phone" in want:
                spans += self._phones(text, spans)
        return [
            Finding(s.category, s.score, self.detector_id, s.start, s.end, PLACEHOLDERS[s.category])
            for s in _without_overlaps(spans)
        ]

    @staticmethod
    def _analyze(recognizer, text: str) -> list:  # type: ignore[no-untyped-def]
        return [r for r in recognizer.analyze(text, recognizer.supported_entities, None) if r.score >= 0.5]

    def _cards(self, text: str) -> list[_Span]:
        out = []
        for r in self._analyze(self._card, text):
            digits = re.sub(r"\D", "", text[r.start : r.end])
            if luhn_valid(digits):
                out.append(_Span("pii.credit_card", 0.95 if known_card_issuer(digits) else 0.7, r.start, r.end))
        return out

    def _ssns(self, text: str) -> list[_Span]:
        out = []
        for r in self._ssn.analyze(text, self._ssn.supported_entities, None):
            if r.score <= 0:  # invalidated by the issuing rules
                continue
            context = _near(_SSN_CONTEXT, text, r.start, r.end)
            separated = not text[r.start : r.end].isdigit()
            if separated and len(re.findall(r"\d+", text[r.start : r.end])) == 3:
                out.append(_Span("pii.us_ssn", 0.95 if context else 0.85, r.start, r.end))
            elif context:
                out.append(_Span("pii.us_ssn", 0.8, r.start, r.end))
        return out

    def _ips(self, text: str) -> list[_Span]:
        out = []
        for r in self._analyze(self._ip, text):
            try:
                address = ipaddress.ip_interface(text[r.start : r.end]).ip
            except ValueError:  # the recognizer validated it; a stray form is simply not an IP
                continue
            private_to_host = address.is_loopback or address.is_unspecified or address.is_link_local
            out.append(_Span("pii.ip_address", 0.3 if private_to_host else 0.85, r.start, r.end))
        return out

    def _phones(self, text: str, taken: list[_Span]) -> list[_Span]:
        out = []
        for m in _PHONE.finditer(text):
            raw = m.group()
            digits = re.sub(r"\D", "", raw)
            if not 7 <= len(digits) <= 15 or any(s.start < m.end() and m.start() < s.end for s in taken):
                continue
            if not _valid_phone(raw):
                continue
            written_like_one = raw.startswith(("+", "(")) or bool(re.search(r"\d[ .-]\d", raw))
            context = _near(_PHONE_CONTEXT, text, m.start(), m.end())
            out.append(_Span("pii.phone", 0.9 if written_like_one or context else 0.6, m.start(), m.end()))
        return out


def _valid_phone(raw: str) -> bool:
    """Whether libphonenumber knows `raw` as a valid number: international if it starts with +,
    else North American, or (with a leading trunk 0) British, German or French."""
    regions = (None,) if raw.startswith("+") else ("US", "GB", "DE", "FR") if raw.lstrip("(").startswith("0") else ("US",)
    for region in regions:
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(raw, region)):
                return True
        except phonenumbers.NumberParseException:  # not a number in this region's plan: try the next
            continue
    return False


def _without_overlaps(items: list[_Span]) -> list[_Span]:
    """Of overlapping spans, the highest-scored (then longest) one, in text order. One sweep in
    start order (n log n: a text of 100 k characters can hold tens of thousands of matches)."""
    kept: list[_Span] = []
    for s in sorted(items, key=lambda x: (x.start, -x.end)):
        if kept and s.start < kept[-1].end:
            last = kept[-1]
            if (s.score, s.end - s.start) > (last.score, last.end - last.start):
                kept[-1] = s
            continue
        kept.append(s)
    return kept
