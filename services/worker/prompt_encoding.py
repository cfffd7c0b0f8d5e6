"""Turns a work item's prompt, chat messages or prompt token ids (plus any continuation) into
prompt token ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.worker.engine import TextDelta, WorkItem
from shared.records import MAX_TEXT_CHARS

__all__ = ["MAX_DECODED_PROMPT_CHARS", "EncodedPrompt", "PromptEncoder", "PromptError"]


class PromptError(ValueError):
    """The item cannot be turned into a prompt the model accepts (not retryable)."""


@dataclass(frozen=True, slots=True)
class EncodedPrompt:
    """Token ids to prefill and how many tokens this worker may still generate."""

    ids: list[int]
    budget: int
    """max_new_tokens minus the tokens of the continuation."""
    continuation_ids: tuple[int, ...] = ()
    """The continuation's tokens on their own (the end of `ids`, give or take a merge at the
    boundary): output already generated elsewhere, which the presence and frequency penalties
    count as this answer's."""
    decoded: str | None = None
    """A prompt given as token ids, decoded (for the reply: `TextDelta.prompt_text`); None for
    the others."""

    def admission_delta(self, item: WorkItem) -> TextDelta | None:
        """What the reply learns of the prompt as soon as the item is accepted, on a delta of its
        own (None: nothing): the decoding of a prompt of token ids, and the prompt's token ids
        when the item asked for them (`return_token_ids`), except after a continuation, whose
        ids would hold output an earlier attempt already reported."""
        ids = tuple(self.ids) if item.params.return_token_ids and not item.continuation else ()
        if self.decoded is None and not ids:
            return None
        return TextDelta(item.request_id, "", 0, prompt_text=self.decoded, prompt_token_ids=ids)


#: Longest decoding of a prompt of token ids that a reply may carry (ReplyEvent.prompt_text).
MAX_DECODED_PROMPT_CHARS = MAX_TEXT_CHARS * 2


class PromptEncoder:
    """Applies the chat template and tokenizes, checking the model's length limit. `vocab_size`:
    the ids a prompt of token ids may use (default: the tokenizer's)."""

    def __init__(self, tokenizer: Any, max_model_len: int, *, vocab_size: int | None = None) -> None:
        self._tokenizer = tokenizer
        self._max_model_len = max_model_len
        self._vocab_size = len(tokenizer) if vocab_size is None else vocab_size

    def encode(self, item: WorkItem) -> EncodedPrompt:
        tokenizer = self._tokenizer
        decoded: str | None = None
        continuation_ids: tuple[int, ...] = ()
        if item.continuation:
            continuation_ids = tuple(tokenizer(item.continuation, add_special_tokens=False)["input_ids"])
        if not item.messages and item.prompt_token_ids:
            beyond = max(item.prompt_token_ids)
            if beyond >= self._vocab_size:
                raise PromptError(
                    f"the prompt names token id {beyond}; this model's vocabulary has {self._vocab_size} tokens"
                )
            decoded = tokenizer.decode(item.prompt_token_ids)
            if len(decoded) > MAX_DECODED_PROMPT_CHARS:
                raise PromptError(f"the prompt's token ids decode to more than {MAX_DECODED_PROMPT_CHARS} characters")
            ids = [*item.prompt_token_ids, *continuation_ids]
        elif item.messages:
            if not getattr(tokenizer, "chat_template", None):
                raise PromptError("this model has no chat template: send a raw prompt instead of messages")
            turns = [{"role": m.role, "content": m.content} for m in item.messages]
            try:
                text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            except Exception as exc:
                # Safe: template errors (an unsupported role order, ...) are the request's fault.
                raise PromptError(f"the chat template rejected the messages: {exc}") from exc
            # The rendered template already holds the special tokens it needs.
            ids = tokenizer(text + item.continuation, add_special_tokens=False)["input_ids"]
        else:
            if not item.prompt:
                raise PromptError("the prompt is empty")
            ids = tokenizer(item.prompt + item.continuation)["input_ids"]
        if not ids:
            raise PromptError("the prompt has no tokens")
        continuation_tokens = item.continuation_tokens or len(continuation_ids)
        budget = max(0, item.params.max_new_tokens - continuation_tokens)
        if len(ids) + budget > self._max_model_len:
            raise PromptError(
                f"the prompt has {len(ids)} tokens and up to {budget} more may be generated, "
                f"{len(ids) + budget} in all, beyond this worker's max_model_len of {self._max_model_len}; "
                "shorten the prompt or lower max_new_tokens"
            )
        return EncodedPrompt(list(ids), budget, continuation_ids, decoded)
