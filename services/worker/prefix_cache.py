"""Prompt prefixes whose keys and values are computed once and reused by later prefills (the
transformers backend, through the Llama steps or transformers' own forward).

Chat prompts begin alike: the chat template's system turn (24 tokens for SmolLM2) and often the
first words of the instruction. A token's keys and values depend only on the tokens up to it and
its position, so rows that begin with the same tokens have the same keys and values there. A
prefill therefore runs such a prefix once, as one row, copies its keys and values into every row
and runs only the rest of each prompt (`ModelSteps.prefill_cache`). What it runs is kept here,
least recently used first out, within a budget of cached tokens, so that later prefills (a lone
newcomer included) start from it too. vLLM does the same with its automatic prefix caching (in
blocks of 16 tokens); this keeps whole prefixes.

Which prefix a prefill uses (`PrefixCache.prefix_for`): the longest cached one that every prompt
of the prefill begins with, unless the prompts' own common prefix is at least `min_tokens` longer
(then that one is run, kept and used). Every prompt keeps at least one token to run, whose logits
pick its first token.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PrefixCache", "SharedPrefix"]


@dataclass(frozen=True, slots=True)
class SharedPrefix:
    """A prompt prefix and its keys and values (a one-row cache holding exactly its tokens: a
    `KVSlab` of the Llama steps, or a `TransformersKV`)."""

    tokens: tuple[int, ...]
    cache: Any


class PrefixCache:
    """Prefixes and their keys and values, least recently used first out (engine thread only)."""

    def __init__(self, max_tokens: int, min_tokens: int = 16) -> None:
        self.max_tokens = max_tokens
        """Most prefix tokens held, all entries together; 0 turns reuse off."""
        self.min_tokens = min_tokens
        """Shortest prefix worth running on its own, and the least a new prefix must add to the
        longest cached one that fits (a one-row run of a few tokens costs about what it saves)."""
        self._entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.reused_tokens = 0
        """Prompt tokens not run because a prefix's keys and values were reused (a prefix run for
        this prefill was still run once: its rows but one count)."""

    @property
    def tokens(self) -> int:
        """Prefix tokens held now."""
        return sum(len(tokens) for tokens in self._entries)

    def prefix_for(
        self, prompts: Sequence[Sequence[int]], run: Callable[[Sequence[int]], Any]
    ) -> SharedPrefix | None:
        """The prefix these prompts' prefill starts from, running (`run`) and keeping a new one
        when their common prefix is worth it; None: prefill them whole."""
        if self.max_tokens <= 0 or not prompts:
            return None
        # Every prompt keeps at least one token to run: its logits pick the first token.
        limit = min(len(prompt) for prompt in prompts) - 1
        cached = self._longest_cached(prompts, limit)
        common = min(len(os.path.commonprefix([list(p) for p in prompts])), limit) if len(prompts) > 1 else 0
        floor = len(cached.tokens) if cached is not None else 0
        if common >= self.min_tokens and common >= floor + self.min_tokens and common <= self.max_tokens:
            tokens = tuple(prompts[0][:common])
            made = SharedPrefix(tokens, run(tokens))
            self._keep(made)
            self.reused_tokens += common * (len(prompts) - 1)
            return made
        if cached is not None:
            self._entries.move_to_end(cached.tokens)
            self.reused_tokens += len(cached.tokens) * len(prompts)
        return cached

    def clear(self) -> None:
        self._entries.clear()

    def _longest_cached(self, prompts: Sequence[Sequence[int]], limit: int) -> SharedPrefix | None:
        best: SharedPrefix | None = None
        for tokens, cache in self._entries.items():
            size = len(tokens)
            if size > limit or (best is not None and size <= len(best.tokens)):
                continue
            if all(tuple(prompt[:size]) == tokens for prompt in prompts):
                best = SharedPrefix(tokens, cache)
        return best

    def _keep(self, prefix: SharedPrefix) -> None:
        self._entries[prefix.tokens] = prefix.cache
        self._entries.move_to_end(prefix.tokens)
        while self.tokens > self.max_tokens:
            self._entries.popitem(last=False)
