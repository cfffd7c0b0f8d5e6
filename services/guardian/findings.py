"""What a detector reports, and the interface every detector implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Detector", "Finding", "TextKind"]

#: What is being judged: a user's prompt or a model's response.
TextKind = Literal["prompt", "response"]


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
    """A cheap, pure check over one text."""

    name: str
    version: str

    @property
    def detector_id(self) -> str:
        """`name@version`, as reported in `detectors_run`."""
        ...

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        """Every finding in `text` (may be empty)."""
        ...
