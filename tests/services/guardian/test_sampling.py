"""Sampling: lag -> rate, deterministic choice by request id, flagged tenants shared through Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from services.guardian.sampling import FlaggedTenants, LagSampler, is_sampled


def test_rate_falls_linearly_from_one_to_the_floor() -> None:
    sampler = LagSampler(floor=0.2, lag_low=100, lag_high=500)
    assert [sampler.rate(lag) for lag in (0, 100, 300, 500, 10_000)] == [1.0, 1.0, pytest.approx(0.6), 0.2, 0.2]


def test_bad_sampler_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="lag_high"):
        LagSampler(floor=0.1, lag_low=10, lag_high=10)
    with pytest.raises(ValueError, match="floor"):
        LagSampler(floor=1.5, lag_low=0, lag_high=10)


def test_sampling_is_deterministic_and_close_to_the_rate() -> None:
    ids = [f"req-{i}" for i in range(4_000)]
    chosen = [i for i in ids if is_sampled(i, 0.25)]
    assert chosen == [i for i in ids if is_sampled(i, 0.25)]  # same answer every time
    assert 0.22 < len(chosen) / len(ids) < 0.28
    assert all(is_sampled(i, 1.0) for i in ids[:50]) and not any(is_sampled(i, 0.0) for i in ids[:50])
    # A lower rate picks a subset of a higher one (a text sampled out at 0.5 stays out at 0.25).
    assert set(chosen) <= {i for i in ids if is_sampled(i, 0.5)}


async def test_flagged_tenants_are_shared_through_redis_and_expire(
    redis_client: aioredis.Redis, unique_prefix: str
) -> None:
    one = FlaggedTenants(redis_client, prefix=unique_prefix, window_s=1)
    other = FlaggedTenants(redis_client, prefix=unique_prefix, window_s=1)  # another replica
    assert await other.recent(["acme", "globex"]) == set()
    await one.mark(["acme"])
    assert await other.recent(["acme", "globex"]) == {"acme"}
    assert await redis_client.ttl(f"{unique_prefix}:guardian:flagged:acme") in (0, 1)
    await asyncio.sleep(1.2)
    assert await other.recent(["acme"]) == set()


async def test_without_redis_a_replica_remembers_its_own_flags(unique_prefix: str) -> None:
    # Nothing listens on port 1: every Redis call fails fast.
    broken = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        flagged = FlaggedTenants(broken, prefix=unique_prefix, window_s=60)
        await flagged.mark(["acme"])  # no exception: logged
        assert await flagged.recent(["acme", "globex"]) == {"acme"}
    finally:
        await broken.aclose()
