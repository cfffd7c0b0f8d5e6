"""Per-tenant rate limits shared by every gateway replica, kept in Redis.

Three limits per tenant, checked and taken in ONE Lua script so that replicas never race:

* requests per minute and tokens per minute: token buckets (capacity = the per-minute limit,
  refilled continuously), timed by Redis's own clock (`TIME`), so replicas' clocks don't matter;
* concurrent requests: a counter with a TTL refreshed on every admission, so slots held by a
  gateway that died come back after `gateway_concurrency_ttl_s`.

Tokens are counted up front as the prompt's estimated tokens (characters / 4) plus `max_tokens`,
and reconciled with the real usage when the request ends (unused tokens go back into the bucket). A
request whose up-front cost exceeds the whole bucket needs a full bucket (it is not refused for
ever). A refusal raises TooManyRequestsError with a Retry-After computed from the bucket.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway.errors import EngineUnavailableError, TooManyRequestsError
from services.gateway.tenants import Tenant

__all__ = ["RateLimiter", "TenantSlot", "estimate_tokens"]

log = logging.getLogger(__name__)

# KEYS: requests bucket, tokens bucket, concurrency counter
# ARGV: requests_per_min, tokens_per_min, token cost, max_concurrent, concurrency ttl (s)
# Returns {1, 0, ""} when admitted, else {0, retry_after_ms, which limit}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function bucket(key, per_min, cost)
  if per_min <= 0 then return nil, 0, 0 end
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or per_min
  local ts = tonumber(state[2]) or now
  local rate = per_min / 60000.0
  tokens = math.min(per_min, tokens + math.max(0, now - ts) * rate)
  if cost > per_min then cost = per_min end
  if tokens < cost then
    return false, math.ceil((cost - tokens) / rate), tokens
  end
  return true, 0, tokens - cost
end
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_conc, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local ok_r, wait_r, left_r = bucket(KEYS[1], rpm, 1)
if ok_r == false then return {0, wait_r, 'requests_per_min'} end
local ok_t, wait_t, left_t = bucket(KEYS[2], tpm, cost)
if ok_t == false then return {0, wait_t, 'tokens_per_min'} end
if max_conc > 0 then
  local current = tonumber(redis.call('GET', KEYS[3]) or '0')
  if current >= max_conc then return {0, 1000, 'max_concurrent'} end
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ttl)
end
if ok_r then
  redis.call('HSET', KEYS[1], 'tokens', tostring(left_r), 'ts', now)
  redis.call('PEXPIRE', KEYS[1], 120000)
end
if ok_t then
  redis.call('HSET', KEYS[2], 'tokens', tostring(left_t), 'ts', now)
  redis.call('PEXPIRE', KEYS[2], 120000)
end
return {1, 0, ''}
"""

# KEYS: concurrency counter, tokens bucket
# ARGV: 1 if the request holds a concurrency slot else 0, tokens_per_min, tokens to give back
# (negative: take more; 0: nothing to reconcile). One script, so the end of a request costs one
# round trip. The counter never goes below 0 (its TTL may have reset it meanwhile); tokens are
# only reconciled in a bucket that still exists (an expired one is full anyway).
_RELEASE = """
if tonumber(ARGV[1]) == 1 then
  local current = tonumber(redis.call('GET', KEYS[1]) or '0')
  if current > 0 then redis.call('DECR', KEYS[1]) end
end
local per_min, delta = tonumber(ARGV[2]), tonumber(ARGV[3])
if delta ~= 0 and per_min > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  local tokens = tonumber(redis.call('HGET', KEYS[2], 'tokens')) or per_min
  tokens = math.min(per_min, tokens + delta)
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens))
end
return 1
"""


def estimate_tokens(prompt_chars: int, max_new_tokens: int, *, prompt_token_ids: int = 0) -> int:
    """Up-front token cost of a request: prompt characters / 4 (rounded up), plus the prompt's
    token ids as they are (a prompt of token ids), plus max_tokens."""
    return math.ceil(prompt_chars / 4) + prompt_token_ids + max_new_tokens


@dataclass(slots=True)
class TenantSlot:
    """What one admitted request took from its tenant's limits; give it back with `release`."""

    limiter: RateLimiter | None
    tenant: Tenant
    tokens_taken: int
    holds_concurrency: bool
    released: bool = False

    async def release(self, used_tokens: int | None) -> None:
        """Free the concurrency slot and reconcile tokens with the real usage (None: keep the
        up-front count). Idempotent; failures are logged, never raised (the request is done)."""
        if self.released or self.limiter is None:
            return
        self.released = True
        await self.limiter._release(self, used_tokens)


class RateLimiter:
    """Checks and takes tenants' limits in Redis."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, concurrency_ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = concurrency_ttl_s
        self._acquire = redis.register_script(_ACQUIRE)
        self._release_script = redis.register_script(_RELEASE)

    def _keys(self, tenant: str) -> list[str]:
        base = f"{self._prefix}:ratelimit:{{{tenant}}}"
        return [f"{base}:requests", f"{base}:tokens", f"{base}:concurrent"]

    async def acquire(self, tenant: Tenant, tokens: int) -> TenantSlot:
        """Take one request and `tokens` tokens (and a concurrency slot) from the tenant's limits,
        or raise TooManyRequestsError with a Retry-After."""
        limited = tenant.requests_per_min or tenant.tokens_per_min or tenant.max_concurrent
        if not limited:
            return TenantSlot(None, tenant, 0, False)
        try:
            admitted, wait_ms, which = await self._acquire(
                keys=self._keys(tenant.name),
                args=[tenant.requests_per_min, tenant.tokens_per_min, tokens, tenant.max_concurrent, self._ttl],
            )
        except (RedisError, OSError) as exc:
            # Limits cannot be checked: refuse with 503 rather than serve without limits.
            raise EngineUnavailableError(f"Rate limits cannot be checked right now: {exc}") from exc
        if not admitted:
            which = which.decode() if isinstance(which, bytes) else str(which)
            retry_after = max(1, math.ceil(int(wait_ms) / 1000))
            log.info("rate limited", extra={"tenant": tenant.name, "limit": which, "retry_after_s": retry_after})
            raise TooManyRequestsError(
                f"Rate limit reached for tenant '{tenant.name}' ({which.replace('_', ' ')}); "
                f"retry after {retry_after} s.",
                retry_after_s=retry_after,
            )
        return TenantSlot(self, tenant, tokens if tenant.tokens_per_min else 0, tenant.max_concurrent > 0)

    async def _release(self, slot: TenantSlot, used_tokens: int | None) -> None:
        _requests_key, tokens_key, concurrent_key = self._keys(slot.tenant.name)
        give_back = 0
        if slot.tokens_taken and used_tokens is not None:
            give_back = slot.tokens_taken - used_tokens
        if not slot.holds_concurrency and give_back == 0:
            return
        try:
            await self._release_script(
                keys=[concurrent_key, tokens_key],
                args=[int(slot.holds_concurrency), slot.tenant.tokens_per_min, give_back],
            )
        except (RedisError, OSError):
            # Safe: the concurrency counter's TTL frees the slot later; tokens refill by time.
            log.warning("could not release a tenant's rate-limit slot", exc_info=True, extra={"tenant": slot.tenant.name})
