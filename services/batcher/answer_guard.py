"""Blocking guard mode, enforced where answers leave the cluster: in the batcher.

The gateway judges a blocking-mode tenant's answer before sending it to its client, but a producer
writing straight to a request topic (the Kafka ingress) never meets the gateway: without this module
it would receive the answer, token by token, on its own reply topic. So the batcher holds the answer
of every request that is in blocking mode — its record says `guard: blocking`, or its tenant is listed
as blocking (shared/blocking_tenants.py), whatever the record says — and:

* sends no token deltas to `reply_to` (the whole answer comes in the final event, as for the
  gateway's blocking mode);
* asks the guardian's `POST /v1/guard/check` for a verdict on the final text (bounded by
  `batcher_guard_timeout_s`);
* `block` -> the request ends with the error `content_filter` (none of the answer is sent);
  `redact` -> the final event carries the verdict's redacted text; `allow`, `flag` -> the answer;
* no verdict in time -> the error `guardian_unavailable` (retryable; fail closed).

The results topic still gets the generated text (it is internal: the guardian's asynchronous
verdict and the audit trail need it) unless the answer was blocked. A request that came through the
gateway is judged twice, here and there; the second check is a hit in the guardian's verdict cache
(same text), so it costs a Redis lookup, and the gateway's check also covers cache replays, which
never reach a batcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from shared.blocking_tenants import BlockingTenants
from shared.guardian_check import GuardianCheckClient, GuardianCheckError
from shared.records import ErrorCode, GenerationRequest, GuardMode, VerdictAction

__all__ = ["AnswerGuard", "JudgedAnswer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JudgedAnswer:
    """What may leave the batcher for a held answer: `text` to send, or an `error` instead."""

    text: str | None
    error: ErrorCode | None = None
    message: str = ""
    retryable: bool = False


class AnswerGuard:
    """Decides which requests are held, and judges their answers with the guardian."""

    def __init__(
        self,
        tenants: BlockingTenants,
        guardian: GuardianCheckClient,
        *,
        refresh_s: float,
        on_judged: Callable[[str], None] = lambda _outcome: None,
    ) -> None:
        self._tenants = tenants
        self._guardian = guardian
        self._refresh_s = refresh_s
        self._on_judged = on_judged
        self.blocking: frozenset[str] = frozenset()
        """The tenants in blocking mode, as last read from Redis."""

    async def refresh(self) -> None:
        """Re-read the blocking tenants (RedisError/OSError when Redis cannot be read)."""
        self.blocking = await self._tenants.read()

    async def refresh_forever(self) -> None:
        """Re-read the list every `refresh_s` until cancelled."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except (RedisError, OSError):
                # Safe: the last list stays in force (tenants already blocking stay held); only a
                # tenant put in blocking mode during the outage waits for Redis to come back.
                log.warning("could not re-read the blocking tenants; keeping the last list", exc_info=True)

    def holds(self, request: GenerationRequest) -> bool:
        """Whether this request's answer must be judged before it leaves."""
        return request.guard is GuardMode.BLOCKING or request.tenant in self.blocking

    async def judge(self, request: GenerationRequest, text: str) -> JudgedAnswer:
        """The guardian's decision on a held answer."""
        try:
            verdict = await self._guardian.check(text, kind="response", tenant=request.tenant, request_id=request.id)
        except GuardianCheckError as exc:
            self._on_judged("unavailable")
            log.warning("no verdict for a held answer; not sending it (fail closed)", extra={"reason": str(exc)})
            return JudgedAnswer(None, ErrorCode.GUARDIAN_UNAVAILABLE, str(exc), retryable=True)
        self._on_judged(verdict.action.value)
        if verdict.action is VerdictAction.BLOCK:
            categories = ", ".join(c.category for c in verdict.categories)
            log.info("held answer blocked by the guardian", extra={"categories": categories, "tenant": request.tenant})
            return JudgedAnswer(None, ErrorCode.CONTENT_FILTER, f"The answer was withheld by the content filter ({categories}).")
        if verdict.action is VerdictAction.REDACT and verdict.redacted_text is not None:
            return JudgedAnswer(verdict.redacted_text)
        return JudgedAnswer(text)

    async def aclose(self) -> None:
        await self._guardian.aclose()
