"""What a detector reports, and the interface every detector implements."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Literal, Protocol

__all__ = ["Detector", "DetectorCost", "Finding", "TextKind"]

#: What is being judged: a user's prompt or a model's response.
TextKind = Literal["prompt", "response"]

#: `cheap` detectors (regexes, checksums, word lists: microseconds) always run; `expensive` ones
#: (NER, embeddings, classifiers: milliseconds) may be sampled out when the guardian falls behind.
DetectorCost = Literal["cheap", "expensive"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a detector found, with where it is in the text."""

    category: str
    """E.g. `pii.email`, `pii.credit_card`, `injection`."""
    score: float
    """Confidence in [0, 1]."""
    detector: str
    """`name@version` of the detector."""
    start: int
    """Offset of the first character."""
    end: int
    """Offset after the last character."""
    placeholder: str | None = None
    """Replacement when the span must be redacted; None: report only (flag)."""


class Detector(Protocol):
    """A pure check over texts (no I/O; thread-safe, so several may run at once on a thread pool)."""

    name: str
    version: str
    cost: DetectorCost

    @property
    def detector_id(self) -> str:
        """`name@version`, as reported in `detectors_run`."""
        ...

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        """Every finding in `text` (may be empty)."""
        ...

    def detect_many(self, texts: Sequence[str], kind: TextKind) -> list[list[Finding]]:
        """`detect` over many texts at once, one list per text in order (model-based detectors
        batch their forward pass here; simple ones loop over `detect`)."""
        ...
