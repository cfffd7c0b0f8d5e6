"""Small real detectors for pipeline tests: an `expensive` one (counts its batch calls) and one that
fails on a marker word, so tests can see sampling, batching and failure isolation."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from services.guardian.detector_base import LoopingDetector
from services.guardian.findings import Finding, TextKind

__all__ = [
    "EmailTestDetector",
    "FailingDetector",
    "PhraseTestDetector",
    "WordHarmDetector",
    "detectors_for_tests",
]

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


class WordHarmDetector(LoopingDetector):
    """`harm.S9` (score 0.9) wherever `word` occurs; expensive, batched."""

    name = "word-harm"
    version = "1"
    cost = "expensive"

    def __init__(self, word: str = "bomb", score: float = 0.9) -> None:
        self.word = word
        self.score = score
        self.calls: list[int] = []
        """Size of every detect_many call."""
        self._lock = threading.Lock()

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        at = text.find(self.word)
        if at < 0:
            return []
        return [Finding("harm.S9", self.score, self.detector_id, at, at + len(self.word))]

    def detect_many(self, texts: Sequence[str], kind: TextKind) -> list[list[Finding]]:
        with self._lock:
            self.calls.append(len(texts))
        return [self.detect(t, kind) for t in texts]


class FailingDetector:
    """Raises on any text containing `POISON` (a detector bug); cheap, no detect_many."""

    name = "failing"
    version = "1"

    @property
    def detector_id(self) -> str:
        return f"{self.name}@{self.version}"

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        if "POISON" in text:
            raise RuntimeError("detector bug")
        return []


class EmailTestDetector(LoopingDetector):
    """`pii.email` (0.95, placeholder `[EMAIL]`) for every `name@host.tld`; cheap."""

    name = "test-email"
    version = "1"
    cost = "cheap"

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        return [Finding("pii.email", 0.95, self.detector_id, m.start(), m.end(), "[EMAIL]") for m in _EMAIL.finditer(text)]


class PhraseTestDetector(LoopingDetector):
    """`injection` (0.8) when a text says "ignore previous instructions"; cheap, batched."""

    name = "test-injection"
    version = "1"
    cost = "cheap"

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        at = text.lower().find("ignore previous instructions")
        return [] if at < 0 else [Finding("injection", 0.8, self.detector_id, at, at + 28)]


def detectors_for_tests() -> list:
    """The cheap test detectors plus a fresh expensive WordHarmDetector (last)."""
    return [EmailTestDetector(), PhraseTestDetector(), WordHarmDetector()]
