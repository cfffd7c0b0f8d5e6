"""Runs the detectors over texts and turns their findings into GuardianVerdicts.

Two ways in: :meth:`Evaluator.evaluate` judges one text in the calling thread (tests, tools), and
:meth:`Evaluator.evaluate_batch` judges a batch for the consumer and the check API: every detector
gets the batch's texts of one kind in ONE `detect_many` call (model-based detectors batch their
forward pass there), each call on the thread pool it is given, all detectors at once — so the event
loop never runs detector code, and expensive detectors (which release the GIL in torch) overlap.
Cheap detectors always run; expensive ones only on the texts the caller selected (sampling), the
others are reported in `detectors_skipped`. An expensive detector's texts are cut into up to
`expensive_slices` parallel pool tasks: with torch at one intra-op thread, that is how a model
detector uses several cores (torch's own thread team stalls at every barrier when another process
holds one of the cores; measured 12 vs 7 ms per text on a loaded 2-core machine).

Detectors written before the `cost`/`detect_many` protocol additions still work: one without
`cost` counts as cheap, and one without `detect_many` is looped over `detect`
(:class:`DetectorRunner`).

The action is decided by :class:`~services.guardian.verdict_policy.ActionPolicy`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from services.guardian.findings import Detector, DetectorCost, Finding, TextKind
from services.guardian.subjects import Subject, content_sha256
from services.guardian.verdict_policy import ActionPolicy, redact
from shared.records import GuardianVerdict

__all__ = ["MIN_SLICE", "DetectorRunner", "Evaluation", "Evaluator", "default_detectors", "redact", "slices"]


def default_detectors() -> list[Detector]:
    """The built-in cheap detectors: validated PII patterns and injection phrases (an Evaluator built
    without detectors; the service uses `detector_catalog.build_detectors(settings)`)."""
    # Imported here: the detector modules load their pattern libraries, which only callers that
    # want these detectors should pay for.
    from services.guardian.injection_detector import PromptInjectionDetector
    from services.guardian.pii_detectors import PatternPiiDetector

    return [PatternPiiDetector(), PromptInjectionDetector()]  # type: ignore[list-item]


class DetectorRunner:
    """One detector behind the full protocol, whatever subset of it the detector implements."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.detector_id: str = detector.detector_id
        cost = getattr(detector, "cost", "cheap")
        if cost not in ("cheap", "expensive"):
            raise ValueError(f"detector {self.detector_id} has cost {cost!r}; expected 'cheap' or 'expensive'")
        self.cost: DetectorCost = cost
        self._detect_many = getattr(detector, "detect_many", None)

    def detect_many(self, texts: Sequence[str], kind: TextKind) -> list[list[Finding]]:
        """Findings per text, in order; RuntimeError if the detector answers for a different count."""
        if self._detect_many is not None:
            out = list(self._detect_many(texts, kind))
        else:
            out = [self.detector.detect(text, kind) for text in texts]
        if len(out) != len(texts):
            raise RuntimeError(f"detector {self.detector_id} returned {len(out)} results for {len(texts)} texts")
        return out

    def timed(self, texts: Sequence[str], kind: TextKind) -> tuple[list[list[Finding]], float]:
        """`detect_many` and the wall time it took."""
        t0 = time.perf_counter()
        out = self.detect_many(texts, kind)
        return out, time.perf_counter() - t0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A verdict plus what it cost, for metrics."""

    verdict: GuardianVerdict
    findings: tuple[Finding, ...]
    detector_seconds: dict[str, float]
    """Wall time per detector id, per text (a batch call's time divided by its texts)."""

    @property
    def complete(self) -> bool:
        """Whether every detector ran (only complete verdicts may be cached)."""
        return not self.verdict.detectors_skipped


#: A slice of an expensive detector's batch holds at least this many texts: below it, a model's
#: batched forward pass gains more from the batch than from a second core.
MIN_SLICE = 8


def slices(indices: list[int], n: int) -> list[list[int]]:
    """`indices` cut into at most `n` contiguous, near-equal parts of at least MIN_SLICE each
    (one part when there are fewer than 2 * MIN_SLICE)."""
    n = max(1, min(n, len(indices) // MIN_SLICE))
    size, extra = divmod(len(indices), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        out.append(indices[start:end])
        start = end
    return out


#: One detector's answer for a group of texts: (runner, indices into the batch, findings, seconds).
_Run = tuple[DetectorRunner, list[int], list[list[Finding]], float]


class Evaluator:
    """The detectors and the action policy."""

    def __init__(
        self,
        detectors: Sequence[Detector] | None = None,
        *,
        policy: ActionPolicy | None = None,
        min_score: float | None = None,
        expensive_slices: int = 1,
    ) -> None:
        """`expensive_slices`: each expensive detector's texts of a batch are cut into up to this
        many slices that run as separate pool tasks (in parallel; see `slices`)."""
        if expensive_slices < 1:
            raise ValueError("expensive_slices must be at least 1")
        self.expensive_slices = expensive_slices
        policy = policy or ActionPolicy()
        if min_score is not None:
            policy = replace(policy, min_score=min_score)
        self.policy = policy
        self.runners = [DetectorRunner(d) for d in (detectors if detectors is not None else default_detectors())]
        ids = [r.detector_id for r in self.runners]
        if len(set(ids)) != len(ids):
            raise ValueError(f"two detectors share an id: {ids}")
        self.cheap = [r for r in self.runners if r.cost == "cheap"]
        self.expensive = [r for r in self.runners if r.cost == "expensive"]
        self.version = hashlib.sha256(
            ("|".join(sorted(ids)) + "#" + policy.fingerprint).encode()
        ).hexdigest()[:16]
        """Changes whenever a detector, its version or the policy changes (verdict cache key)."""

    @property
    def detectors(self) -> list[Detector]:
        return [r.detector for r in self.runners]

    def evaluate(
        self, text: str, *, kind: TextKind, request_id: str, tenant: str, run_expensive: bool = True
    ) -> Evaluation:
        """Judge one text in the calling thread."""
        started = time.perf_counter()
        subject = Subject(request_id, tenant, kind, text)
        runners = self.cheap + (self.expensive if run_expensive else [])
        runs: list[_Run] = [(r, [0], *r.timed([text], kind)) for r in runners]
        return self._assemble([subject], [run_expensive], runs, started, None)[0]

    async def evaluate_batch(
        self,
        subjects: Sequence[Subject],
        run_expensive: Sequence[bool],
        *,
        executor: Executor | None = None,
        sample_rates: Sequence[float] | None = None,
    ) -> list[Evaluation]:
        """Judge a batch, every detector once per kind on `executor` (None: the loop's default),
        all concurrently; `run_expensive[i]` says whether subject i gets the expensive detectors."""
        if len(run_expensive) != len(subjects):
            raise ValueError("run_expensive must have one flag per subject")
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        by_kind: dict[TextKind, list[int]] = {}
        for i, s in enumerate(subjects):
            by_kind.setdefault(s.kind, []).append(i)
        jobs: list[tuple[DetectorRunner, list[int], asyncio.Future[tuple[list[list[Finding]], float]]]] = []
        for kind, indices in by_kind.items():
            sampled = [i for i in indices if run_expensive[i]]
            for runner in self.runners:
                chosen = indices if runner.cost == "cheap" else sampled
                if not chosen:
                    continue
                parts = slices(chosen, self.expensive_slices) if runner.cost == "expensive" else [chosen]
                for part in parts:
                    texts = [subjects[i].text for i in part]
                    jobs.append((runner, part, loop.run_in_executor(executor, runner.timed, texts, kind)))
        answers = await asyncio.gather(*(job[2] for job in jobs))
        runs: list[_Run] = [(runner, idx, found, secs) for (runner, idx, _), (found, secs) in zip(jobs, answers)]
        return self._assemble(subjects, run_expensive, runs, started, sample_rates)

    def _assemble(
        self,
        subjects: Sequence[Subject],
        run_expensive: Sequence[bool],
        runs: list[_Run],
        started: float,
        sample_rates: Sequence[float] | None,
    ) -> list[Evaluation]:
        findings: list[list[Finding]] = [[] for _ in subjects]
        seconds: list[dict[str, float]] = [{} for _ in subjects]
        for runner, indices, found, secs in runs:
            per_text = secs / len(indices)
            for i, f in zip(indices, found):
                findings[i].extend(f)
                seconds[i][runner.detector_id] = per_text
        latency_ms = (time.perf_counter() - started) * 1000.0
        cheap_ids = tuple(r.detector_id for r in self.cheap)
        expensive_ids = tuple(r.detector_id for r in self.expensive)
        out: list[Evaluation] = []
        for i, subject in enumerate(subjects):
            decision = self.policy.decide(subject.text, findings[i])
            ran = cheap_ids + expensive_ids if run_expensive[i] else cheap_ids
            verdict = GuardianVerdict(
                request_id=subject.request_id,
                tenant=subject.tenant,
                kind=subject.kind,
                action=decision.action,
                categories=decision.categories,
                detectors_run=ran,
                detectors_skipped=() if run_expensive[i] else expensive_ids,
                redacted_text=decision.redacted_text,
                latency_ms=latency_ms,
                sample_rate=sample_rates[i] if sample_rates is not None else 1.0,
                content_sha256=content_sha256(subject.text),
            )
            out.append(Evaluation(verdict, decision.findings, seconds[i]))
        return out
