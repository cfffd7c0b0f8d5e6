"""Incremental detokenization: token ids in, only the new text out.

Decoding token by token is wrong for byte-level tokenizers (one character may span several
tokens) and for SentencePiece ones (a token's leading space depends on its neighbours). So each
step decodes a short window twice, with and without the newest tokens, and emits the difference
(the scheme vLLM and TGI use). Text that ends in U+FFFD is an unfinished UTF-8 character: it is held
until the tokens that complete it arrive, or released as it is when generation ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["IncrementalDetokenizer", "TokenDecoder", "TokenTexts"]

#: Prompt tokens kept as left context, so the first generated token decodes with its real spacing.
_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class TokenDecoder(Protocol):
    """The part of a Hugging Face tokenizer this needs."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turns one sequence's generated token ids into text deltas."""

    def __init__(self, tokenizer: TokenDecoder, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Append one generated token; return the text it completes (may be empty)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Generation ended: return text still held back (an unfinished character as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read_offset >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) and not final:
            return ""
        if new_text.endswith(_REPLACEMENT_CHAR) and not final:
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        if self._prefix_offset > 256:  # drop ids no window will read again (long generations)
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return delta


class _TokenNamer(Protocol):
    """The part of a Hugging Face tokenizer that names single tokens."""

    def convert_ids_to_tokens(self, ids: int) -> str | None: ...

    def convert_tokens_to_string(self, tokens: list[str]) -> str: ...


class TokenTexts:
    """Each token id's text on its own, as log probabilities name their tokens.

    As vLLM names them: the token's vocabulary entry made into text (`convert_tokens_to_string`),
    so special tokens keep their names (`<|im_end|>`) and a piece of a multi-byte character reads
    as U+FFFD. Cached per id: with `top_logprobs` a step names up to 21 tokens per row, and a
    vocabulary is small enough to keep (49k entries for SmolLM2).
    """

    def __init__(self, tokenizer: _TokenNamer) -> None:
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            token = self._tokenizer.convert_ids_to_tokens(token_id)
            # None: an id the model's output head has and the tokenizer does not (padded heads).
            text = "" if token is None else self._tokenizer.convert_tokens_to_string([token])
            self._texts[token_id] = text
        return text
