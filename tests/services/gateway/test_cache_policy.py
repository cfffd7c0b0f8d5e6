"""Which requests may be cached, and what a client's Cache-Control asks for."""

from __future__ import annotations

from shared.records import GenerationParams

from services.gateway.cache_policy import is_deterministic, policy_from_cache_control


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
