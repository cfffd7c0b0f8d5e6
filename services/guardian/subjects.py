"""What the guardian judges — a :class:`Subject` — and how Kafka records become one.

A GenerationResult gives its answer (`kind="response"`); a GenerationRequest (when prompt checks
are on) gives its prompt (`kind="prompt"`: the raw prompt, or the chat turns as `role: content`
lines, as the batcher writes `GenerationResult.prompt`). Records whose request asked for
`guard: off` give None (skipped), and so do prompts given as token ids (the guardian has no
tokenizer; their answers' results carry the prompt as the worker decoded it). Anything that is not
a valid record raises ValueError (the consumer dead-letters it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from services.guardian.findings import TextKind
from shared.records import GenerationRequest, GenerationResult, GuardMode

__all__ = ["Subject", "SubjectParser", "content_sha256", "prompt_subject", "response_subject"]


def content_sha256(text: str) -> str:
    """SHA-256 hex of a text (UTF-8; lone surrogates kept, so any str hashes)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Subject:
    """One text to judge, and whose it is."""

    request_id: str
    tenant: str
    kind: TextKind
    text: str


#: Bytes of a record -> the subject to judge (None: skip it); ValueError when it is not valid.
SubjectParser = Callable[[bytes], Subject | None]


def response_subject(data: bytes) -> Subject | None:
    """The answer in a GenerationResult (None when its request asked for `guard: off`)."""
    try:
        result = GenerationResult.from_bytes(data)
    except ValidationError as exc:
        raise ValueError(f"invalid GenerationResult: {exc}") from exc
    if result.guard is GuardMode.OFF:
        return None
    return Subject(result.request_id, result.tenant, "response", result.text)


def prompt_subject(data: bytes) -> Subject | None:
    """The prompt of a GenerationRequest (None when it asked for `guard: off`)."""
    try:
        request = GenerationRequest.from_bytes(data)
    except ValidationError as exc:
        raise ValueError(f"invalid GenerationRequest: {exc}") from exc
    if request.guard is GuardMode.OFF or request.prompt_token_ids is not None:
        # Token ids cannot be judged here (only the workers have the tokenizer); the answer's
        # result carries the prompt as the worker decoded it.
        return None
    return Subject(request.id, request.tenant, "prompt", request.prompt_as_text())
