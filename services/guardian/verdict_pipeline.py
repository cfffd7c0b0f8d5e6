"""From a batch of subjects to their verdicts: verdict cache, sampling, evaluation, bookkeeping.

For a batch (the consumer's, or the check API's single text):

1. one MGET in the verdict cache; hits are re-issued for their request (`cached: true`);
2. misses with the same content are judged once (the batch is deduplicated by cache key);
3. the sample rate for the expensive detectors follows the consumer's lag (:class:`LagSampler`),
   except for tenants flagged recently (always 1.0) and the check API (always 1.0); a text is in the
   sample by a hash of its request id;
4. the evaluator runs the detectors on the thread pool;
5. complete verdicts go into the cache, tenants with a non-`allow` verdict are marked as flagged,
   metrics are counted.

The verdicts come back in the subjects' order; publishing them is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

from services.guardian.evaluator import Evaluation, Evaluator
from services.guardian.metrics import GuardianMetrics
from services.guardian.sampling import FlaggedTenants, LagSampler, is_sampled
from services.guardian.subjects import Subject
from services.guardian.verdict_cache import VerdictCache
from shared.records import GuardianVerdict, VerdictAction

__all__ = ["VerdictPipeline"]


class VerdictPipeline:
    """Judges batches of subjects."""

    def __init__(
        self,
        evaluator: Evaluator,
        metrics: GuardianMetrics,
        *,
        sampler: LagSampler,
        cache: VerdictCache | None = None,
        flagged: FlaggedTenants | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.metrics = metrics
        self.sampler = sampler
        self.cache = cache
        self.flagged = flagged
        self.executor = executor

    async def judge(self, subjects: Sequence[Subject], *, lag: int, source: str) -> list[GuardianVerdict]:
        """Verdicts for `subjects`, in order; the sample rate follows `lag` (records behind)."""
        rate = self.sampler.rate(lag)
        self.metrics.rate(source, rate)
        return await self._judge(subjects, rate, source)

    async def check(self, subject: Subject) -> GuardianVerdict:
        """The full verdict for one text (every detector; the check API)."""
        [verdict] = await self._judge([subject], 1.0, "api")
        return verdict

    async def _judge(self, subjects: Sequence[Subject], rate: float, source: str) -> list[GuardianVerdict]:
        if not subjects:
            return []
        self.metrics.batch_size.labels(source).observe(len(subjects))
        cached = await self.cache.get_many(subjects) if self.cache is not None else [None] * len(subjects)
        out: list[GuardianVerdict | None] = list(cached)
        hits = sum(v is not None for v in cached)
        self.metrics.cache_lookups(hits, len(subjects) - hits)
        for verdict in cached:
            if verdict is not None:
                self.metrics.verdict(verdict, source)

        # Misses, one evaluation per distinct content (key: kind + text).
        groups: dict[tuple[str, str], list[int]] = {}
        for i, subject in enumerate(subjects):
            if out[i] is None:
                groups.setdefault((subject.kind, subject.text), []).append(i)
        if groups:
            firsts = [subjects[idx[0]] for idx in groups.values()]
            forced: set[str] = set()
            if rate < 1.0 and self.flagged is not None:
                forced = await self.flagged.recent(subjects[i].tenant for idx in groups.values() for i in idx)
            flags: list[bool] = []
            rates: list[float] = []
            for idx in groups.values():
                full = any(subjects[i].tenant in forced for i in idx)
                flags.append(full or any(is_sampled(subjects[i].request_id, rate) for i in idx))
                rates.append(1.0 if full else rate)
            evaluations = await self.evaluator.evaluate_batch(
                firsts, flags, executor=self.executor, sample_rates=rates
            )
            to_cache: list[tuple[Subject, GuardianVerdict]] = []
            for evaluation, idx in zip(evaluations, groups.values()):
                self._issue(evaluation, idx, subjects, out, source)
                if evaluation.complete:
                    to_cache.append((subjects[idx[0]], evaluation.verdict))
            if self.cache is not None:
                await self.cache.put_many(to_cache)

        verdicts = [v for v in out if v is not None]
        assert len(verdicts) == len(subjects)
        if self.flagged is not None:
            await self.flagged.mark(v.tenant for v in verdicts if v.action is not VerdictAction.ALLOW)
        return verdicts

    def _issue(
        self,
        evaluation: Evaluation,
        indices: list[int],
        subjects: Sequence[Subject],
        out: list[GuardianVerdict | None],
        source: str,
    ) -> None:
        """Give one evaluation's verdict to every subject that had its content."""
        self.metrics.observe(evaluation, source)
        first, *rest = indices
        out[first] = evaluation.verdict
        for i in rest:
            verdict = evaluation.verdict.model_copy(
                update={"request_id": subjects[i].request_id, "tenant": subjects[i].tenant}
            )
            out[i] = verdict
            self.metrics.verdict(verdict, source)
