"""What every simple detector shares: its `name@version` id and a `detect_many` that loops."""

from __future__ import annotations

from collections.abc import Sequence

from services.guardian.findings import DetectorCost, Finding, TextKind

__all__ = ["LoopingDetector"]


class LoopingDetector:
    """Base of detectors with no batched forward pass: `detect_many` calls `detect` per text."""

    name: str = "unnamed"
    version: str = "1"
    cost: DetectorCost = "cheap"

    @property
    def detector_id(self) -> str:
        return f"{self.name}@{self.version}"

    def detect(self, text: str, kind: TextKind) -> list[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    def detect_many(self, texts: Sequence[str], kind: TextKind) -> list[list[Finding]]:
        return [self.detect(text, kind) for text in texts]
