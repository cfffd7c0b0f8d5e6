"""Which requests the caches may answer or store: determinism, and the client's Cache-Control.

By default only deterministic requests are cached (temperature 0, or a fixed seed): a sampled
answer replayed from a cache would silently remove the randomness the client asked for.
`Cache-Control: no-cache` means "don't answer me from a cache" (the answer may still be stored),
`no-store` means "don't keep my answer" (a cached answer may still be served); both together, or
`no-cache, no-store`, bypass the caches completely.

A request for log probabilities (`logprobs`, or the prompt's: `prompt_logprobs`) or for token ids
(`return_token_ids`) bypasses the caches whatever else it says: a cached answer has none to give,
and storing its answer would only serve requests that have to bypass them too (the parameters are
part of every cache key). So does a prompt given as token ids (response_cache.py): the caches key on
text.
"""

from __future__ import annotations

from shared.records import CachePolicy, GenerationParams

__all__ = ["is_cacheable", "is_deterministic", "policy_from_cache_control"]


def is_deterministic(params: GenerationParams) -> bool:
    """Whether the same request always gets the same answer (greedy, or a fixed seed)."""
    return params.temperature == 0.0 or params.seed is not None


def is_cacheable(params: GenerationParams, *, deterministic_only: bool) -> bool:
    """Whether the caches may answer or store a request with these parameters (see above)."""
    if params.logprobs or params.prompt_logprobs is not None or params.return_token_ids:
        return False
    return not deterministic_only or is_deterministic(params)


def policy_from_cache_control(header: str | None) -> CachePolicy:
    """The client's cache preferences from a `Cache-Control` request header (or gRPC metadata)."""
    if not header:
        return CachePolicy()
    directives = {part.strip().split("=", 1)[0].lower() for part in header.split(",")}
    return CachePolicy(read="no-cache" not in directives, write="no-store" not in directives)
