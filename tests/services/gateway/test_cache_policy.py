"""Which requests may be cached, and what a client's Cache-Control asks for."""

from __future__ import annotations

from shared.records import GenerationParams

from services.gateway.cache_policy import is_cacheable, is_deterministic, policy_from_cache_control


def test_determinism() -> None:
    assert is_deterministic(GenerationParams(temperature=0.0))
    assert is_deterministic(GenerationParams(temperature=0.9, seed=1))
    assert not is_deterministic(GenerationParams(temperature=0.9))


def test_cache_control() -> None:
    assert (lambda p: (p.read, p.write))(policy_from_cache_control(None)) == (True, True)
    assert (lambda p: (p.read, p.write))(policy_from_cache_control("no-cache")) == (False, True)
    assert (lambda p: (p.read, p.write))(policy_from_cache_control("No-Store")) == (True, False)
    assert (lambda p: (p.read, p.write))(policy_from_cache_control("max-age=0, no-cache , no-store")) == (False, False)
    assert (lambda p: (p.read, p.write))(policy_from_cache_control("private")) == (True, True)


def test_logprobs_requests_are_never_cacheable() -> None:
    greedy = GenerationParams(temperature=0.0)
    assert is_cacheable(greedy, deterministic_only=True)
    assert not is_cacheable(GenerationParams(temperature=0.9), deterministic_only=True)
    assert is_cacheable(GenerationParams(temperature=0.9), deterministic_only=False)
    for deterministic_only in (True, False):  # cached answers have no log probabilities to give
        assert not is_cacheable(GenerationParams(temperature=0.0, logprobs=True), deterministic_only=deterministic_only)
        prompt_only = GenerationParams(temperature=0.0, prompt_logprobs=0)
        assert not is_cacheable(prompt_only, deterministic_only=deterministic_only)
