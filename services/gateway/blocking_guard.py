"""Blocking mode: a tenant's answer leaves the gateway only after the guardian's verdict.

For requests whose `guard` is `blocking` (from the tenant's `guard_mode`), the pipeline wraps the
request's event stream — the cluster's, or a cache replay's, so cached answers are never served
without a verdict either; with `n` > 1, each choice's stream, so each choice is judged on its own —
with :func:`guarded_events`:

* token deltas are held back; on the final event the whole answer goes to the guardian's
  `POST /v1/guard/check` (bounded by `gateway_guard_timeout_s`);
* `block` -> ContentFilteredError (400 `content_filter`): nothing of the answer is sent, and it
  is not stored in the caches;
* `redact` -> the answer is replaced by the verdict's `redacted_text`;
* `flag`, `allow` -> the answer as generated;
* no verdict in time -> GuardianUnavailableError (503, fail closed), or with
  `gateway_guard_fail_open` the answer unjudged.

A streaming request is answered as a stream of ONE content chunk (the judged answer) followed by
the final chunk: the stream starts once the verdict is in. Error events pass through unchanged.
The synchronous check is used rather than waiting for the verdict on the verdicts topic: the check
is never sampled, needs no per-request subscription, and its failure is immediate and explicit. The
result still goes to the results topic, so the usual asynchronous verdict follows (a verdict-cache
hit in the guardian) and purges cached copies as for every tenant.

Log probabilities (requests with `logprobs`) come on the deltas held back; they are kept, and let
out with the judged answer when it is the answer as generated (`allow`, `flag`, fail open): on the
one content chunk of a stream, or on a delta of empty text just before the final event of a whole
answer (where GenerationCall.final gathers them). A redacted answer gets none: each generated
token's text travels with its log probability, so they would spell out what was withheld. The
prompt's log probabilities (`echo` with `logprobs`) are about the client's own prompt: they are
let out in every case, on a delta of their own before the answer's, and so are the worker's decoding
of a prompt given as token ids (`prompt_text`) and the prompt's token ids (`prompt_token_ids`). The
generated tokens' ids (`return_token_ids`) go as the log probabilities do: none with a redacted
answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from shared.records import GenerationRequest, ReplyEvent, ReplyKind, TokenLogprob, VerdictAction

from services.gateway.errors import ContentFilteredError, GuardianUnavailableError
from services.gateway.guardian_client import GuardianClient

__all__ = ["guarded_events"]

log = logging.getLogger(__name__)


async def guarded_events(
    events: AsyncIterator[ReplyEvent],
    request: GenerationRequest,
    guardian: GuardianClient,
    *,
    fail_open: bool,
    on_result: Callable[[str], None] = lambda _r: None,
) -> AsyncIterator[ReplyEvent]:
    """`events` with the answer judged before any of it is let through (see the module docstring)."""
    kept: list[TokenLogprob] = []
    kept_prompt: list[TokenLogprob] = []
    kept_ids: list[int] = []
    prompt_text: str | None = None  # a prompt of token ids, decoded: the client's own, like kept_prompt
    prompt_ids: tuple[int, ...] = ()  # likewise
    try:
        async for event in events:
            if event.kind is ReplyKind.DELTA:
                kept.extend(event.logprobs)
                kept_prompt.extend(event.prompt_logprobs)
                kept_ids.extend(event.token_ids)
                if event.prompt_text is not None:
                    prompt_text = event.prompt_text
                prompt_ids = prompt_ids or event.prompt_token_ids
                continue  # held back: the final event carries the whole text
            if event.kind is ReplyKind.ERROR:
                yield event
                return
            text = await _judged_text(event, request, guardian, fail_open=fail_open, on_result=on_result)
            # Dropped when the text was redacted (see the module docstring).
            as_generated = text == event.text
            logprobs = tuple(kept) if as_generated else ()
            token_ids = tuple(kept_ids) if as_generated else ()
            seq = 0
            if kept_prompt or prompt_text is not None or prompt_ids:
                yield ReplyEvent(
                    request_id=request.id, kind=ReplyKind.DELTA, seq=seq, model=event.model,
                    worker_id=event.worker_id, prompt_logprobs=tuple(kept_prompt), prompt_text=prompt_text,
                    prompt_token_ids=prompt_ids,
                )
                seq += 1
            if (request.stream and text) or logprobs or token_ids:
                yield ReplyEvent(
                    request_id=request.id, kind=ReplyKind.DELTA, seq=seq, text=text if request.stream else "",
                    model=event.model, worker_id=event.worker_id, logprobs=logprobs, token_ids=token_ids,
                )
                seq += 1
            yield event.model_copy(update={"text": text, "seq": seq})
            return
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def _judged_text(
    final: ReplyEvent,
    request: GenerationRequest,
    guardian: GuardianClient,
    *,
    fail_open: bool,
    on_result: Callable[[str], None],
) -> str:
    try:
        verdict = await guardian.check(final.text, kind="response", tenant=request.tenant, request_id=request.id)
    except GuardianUnavailableError:
        if not fail_open:
            on_result("unavailable")
            raise
        # Safe by configuration: the operator chose availability over judging every answer; the
        # asynchronous verdict still follows from the results topic.
        log.warning("guardian unavailable; delivering a blocking-mode answer unjudged (fail open)", exc_info=True)
        on_result("failed_open")
        return final.text
    on_result(verdict.action.value)
    if verdict.action is VerdictAction.BLOCK:
        log.info(
            "answer blocked by the guardian",
            extra={"categories": [c.category for c in verdict.categories], "tenant": request.tenant},
        )
        raise ContentFilteredError(
            "The answer was withheld by the content filter ("
            + ", ".join(c.category for c in verdict.categories)
            + ")."
        )
    if verdict.action is VerdictAction.REDACT and verdict.redacted_text is not None:
        return verdict.redacted_text
    return final.text
