"""Turns detector findings into a GuardianVerdict: which action, which categories, the redacted text.

Pure and synchronous (no I/O), so the consumer, the check API and the tests share it. Decision:
any finding that must be redacted (PII) -> `redact` with `redacted_text`; any other finding
(injection) -> `flag`; nothing -> `allow`. Findings scored below the minimum score are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.guardian.findings import Detector, Finding, TextKind
from services.guardian.injection_detector import PromptInjectionDetector
from services.guardian.pii_detectors import CreditCardDetector, EmailDetector
from shared.records import CategoryScore, GuardianVerdict, VerdictAction

__all__ = ["Evaluation", "Evaluator", "default_detectors", "redact"]


def default_detectors() -> list[Detector]:
    """The detectors the guardian runs: cheap, always on."""
    return [EmailDetector(), CreditCardDetector(), PromptInjectionDetector()]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A verdict plus what it cost, for metrics."""

    verdict: GuardianVerdict
    findings: tuple[Finding, ...]
    detector_seconds: dict[str, float]
    """Wall time per detector id."""


def redact(text: str, findings: Sequence[Finding]) -> str:
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


class Evaluator:
    """Runs the detectors over one text and decides."""

    def __init__(self, detectors: Sequence[Detector] | None = None, *, min_score: float = 0.5) -> None:
        self.detectors = list(detectors) if detectors is not None else default_detectors()
        self.min_score = min_score

    def evaluate(self, text: str, *, kind: TextKind, request_id: str, tenant: str) -> Evaluation:
        started = time.perf_counter()
        findings: list[Finding] = []
        seconds: dict[str, float] = {}
        for detector in self.detectors:
            t0 = time.perf_counter()
            findings += [f for f in detector.detect(text, kind) if f.score >= self.min_score]
            seconds[detector.detector_id] = time.perf_counter() - t0

        best: dict[str, Finding] = {}
        for f in findings:
            if f.category not in best or f.score > best[f.category].score:
                best[f.category] = f
        if any(f.placeholder is not None for f in findings):
            action, redacted = VerdictAction.REDACT, redact(text, findings)
        elif findings:
            action, redacted = VerdictAction.FLAG, None
        else:
            action, redacted = VerdictAction.ALLOW, None
        verdict = GuardianVerdict(
            request_id=request_id,
            tenant=tenant,
            kind=kind,
            action=action,
            categories=tuple(
                CategoryScore(category=c, score=f.score, detector=f.detector) for c, f in sorted(best.items())
            ),
            detectors_run=tuple(d.detector_id for d in self.detectors),
            redacted_text=redacted,
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )
        return Evaluation(verdict, tuple(findings), seconds)
