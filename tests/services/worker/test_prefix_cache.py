"""Which prefix a prefill starts from, what is kept and what is evicted (no model: the slabs are
stand-ins; tests/services/worker/test_decode_batch.py runs the real model over shared prefixes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from services.worker.llama_decode import KVSlab
from services.worker.prefix_cache import PrefixCache

SYSTEM = list(range(100, 120))  # 20 tokens every prompt begins with


def _slab(tokens: Sequence[int]) -> KVSlab:
    return KVSlab([torch.zeros((1, 1, 2, len(tokens)))], [torch.zeros((1, 1, len(tokens), 2))], len(tokens))


class Runs:
    """Records which prefixes were run."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, tokens: Sequence[int]) -> KVSlab:
        self.calls.append(tuple(tokens))
        return _slab(tokens)


def test_prompts_sharing_a_long_prefix_run_it_once_and_keep_it() -> None:
    cache, runs = PrefixCache(max_tokens=1000, min_tokens=8), Runs()
    shared = cache.prefix_for([SYSTEM + [1, 2, 3], SYSTEM + [1, 2, 4, 5]], runs)
    assert shared is not None and shared.tokens == tuple(SYSTEM + [1, 2])
    assert runs.calls == [tuple(SYSTEM + [1, 2])] and cache.tokens == 22
    assert cache.reused_tokens == 22  # run once for two rows
    cache.prefix_for([SYSTEM + [1, 2, 9]], runs)
    assert cache.reused_tokens == 44 and len(runs.calls) == 1


def test_a_lone_prompt_starts_from_the_longest_cached_prefix_it_begins_with() -> None:
    cache, runs = PrefixCache(max_tokens=1000, min_tokens=8), Runs()
    cache.prefix_for([SYSTEM + [1], SYSTEM + [2]], runs)
    cache.prefix_for([SYSTEM + [7] * 10 + [1], SYSTEM + [7] * 10 + [2]], runs)
    assert len(runs.calls) == 2
    shared = cache.prefix_for([SYSTEM + [7] * 10 + [9, 9]], runs)
    assert shared is not None and len(shared.tokens) == 30 and len(runs.calls) == 2
    other = cache.prefix_for([SYSTEM + [8, 8]], runs)
    assert other is not None and other.tokens == tuple(SYSTEM)


def test_a_cached_prefix_is_preferred_unless_the_common_one_adds_enough() -> None:
    cache, runs = PrefixCache(max_tokens=1000, min_tokens=8), Runs()
    cache.prefix_for([SYSTEM + [1], SYSTEM + [2]], runs)
    few_more = cache.prefix_for([SYSTEM + [5, 5, 5, 1], SYSTEM + [5, 5, 5, 2]], runs)
    assert few_more is not None and few_more.tokens == tuple(SYSTEM) and len(runs.calls) == 1
    many_more = cache.prefix_for([SYSTEM + [5] * 8 + [1], SYSTEM + [5] * 8 + [2]], runs)
    assert many_more is not None and len(many_more.tokens) == 28 and len(runs.calls) == 2


def test_every_prompt_keeps_a_token_to_run() -> None:
    cache, runs = PrefixCache(max_tokens=1000, min_tokens=8), Runs()
    shared = cache.prefix_for([SYSTEM, SYSTEM + [1, 2]], runs)
    assert shared is not None and len(shared.tokens) == len(SYSTEM) - 1
    # A prompt that is exactly a cached prefix cannot use all of it.
    cache.clear()
    cache.prefix_for([SYSTEM + [1], SYSTEM + [2]], runs)
    assert cache.prefix_for([SYSTEM], runs) is None


def test_short_or_missing_common_prefixes_are_not_run() -> None:
    cache, runs = PrefixCache(max_tokens=1000, min_tokens=8), Runs()
    assert cache.prefix_for([[1, 2, 3, 4, 5], [1, 2, 3, 9, 9]], runs) is None
    assert cache.prefix_for([SYSTEM + [1]], runs) is None  # alone, with nothing cached
    assert runs.calls == [] and cache.tokens == 0


def test_least_recently_used_prefixes_go_first_when_over_budget() -> None:
    cache, runs = PrefixCache(max_tokens=45, min_tokens=8), Runs()
    first, second, third = [[n] * 20 for n in (1, 2, 3)]
    cache.prefix_for([first + [1], first + [2]], runs)
    cache.prefix_for([second + [1], second + [2]], runs)
    cache.prefix_for([first + [3]], runs)  # a hit: `first` is now the most recently used
    cache.prefix_for([third + [1], third + [2]], runs)
    assert cache.tokens == 40
    assert cache.prefix_for([second + [5]], runs) is None
    assert cache.prefix_for([first + [5]], runs) is not None


def test_a_budget_of_zero_turns_reuse_off() -> None:
    cache, runs = PrefixCache(max_tokens=0), Runs()
    assert cache.prefix_for([SYSTEM + [1], SYSTEM + [2]], runs) is None and runs.calls == []
