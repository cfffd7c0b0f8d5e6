"""Which tenants are in blocking guard mode, as every batcher must know it.

Blocking mode ("an answer leaves the cluster only after the guardian's verdict") is a property of
the tenant, not of the request: a producer writing straight to a request topic must not escape it
by leaving the record's `guard` at `async`. So the batchers, where every answer leaves the
cluster, hold and judge the answers of every tenant listed here (services/batcher/answer_guard.py).

Two sources, both in Redis so that every batcher replica sees the same list:

* tenants whose API keys live in Redis (hash `<prefix>:apikeys`, field = SHA-256 of the key,
  value = the tenant as JSON): those whose `guard_mode` is `blocking`, read directly;
* tenants only the gateways know (their keys file, or the open tenant): each gateway announces its
  blocking tenants in the sorted set `<prefix>:guard:blocking-tenants` (score = time of the
  announcement) every :data:`ANNOUNCE_EVERY_S`; an announcement counts for
  :data:`ANNOUNCE_VALID_S`, so a tenant taken out of blocking mode drops out by itself.

Tenant identity on the Kafka ingress is what the producer writes in the record: Kafka ACLs (who
may produce to the request topics, and read which reply topics) are what stop a producer from
claiming another tenant's name. See services/batcher/README.md, "Blocking mode".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = [
    "ANNOUNCE_EVERY_S",
    "ANNOUNCE_VALID_S",
    "BlockingTenants",
    "api_keys_hash",
    "blocking_tenants_key",
]

log = logging.getLogger(__name__)

#: How often a gateway re-announces its blocking tenants.
ANNOUNCE_EVERY_S = 60.0
#: How long one announcement keeps a tenant listed (five announcements: survives Redis hiccups).
ANNOUNCE_VALID_S = 300.0


def api_keys_hash(prefix: str) -> str:
    """The Redis hash holding API keys (field: SHA-256 of the key, value: the tenant as JSON)."""
    return f"{prefix}:apikeys"


def blocking_tenants_key(prefix: str) -> str:
    """The sorted set of tenants the gateways announce as blocking (score: announcement time)."""
    return f"{prefix}:guard:blocking-tenants"


class BlockingTenants:
    """Reads and announces the list of blocking-mode tenants in Redis."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str) -> None:
        self._redis = redis
        self._keys_hash = api_keys_hash(prefix)
        self._announced = blocking_tenants_key(prefix)

    async def announce(self, names: Iterable[str]) -> None:
        """List `names` as blocking now (and drop announcements that have run out)."""
        now = time.time()
        members = {name: now for name in names}
        async with self._redis.pipeline(transaction=True) as pipe:
            if members:
                pipe.zadd(self._announced, members)
            pipe.zremrangebyscore(self._announced, "-inf", now - ANNOUNCE_VALID_S)
            await pipe.execute()

    async def announce_forever(self, names: frozenset[str], every_s: float = ANNOUNCE_EVERY_S) -> None:
        """Announce `names` every `every_s` until cancelled; a failed round is retried next time."""
        while True:
            try:
                await self.announce(names)
            except (RedisError, OSError):
                # Safe: the previous announcement is valid for ANNOUNCE_VALID_S; the next round retries.
                log.warning("could not announce the blocking tenants", exc_info=True)
            await asyncio.sleep(every_s)

    async def read(self) -> frozenset[str]:
        """Every blocking tenant: announced recently, or keyed in Redis with `guard_mode: blocking`.
        Raises RedisError/OSError when Redis cannot be read (the caller keeps its last list)."""
        announced = await self._redis.zrangebyscore(self._announced, time.time() - ANNOUNCE_VALID_S, "+inf")
        names = {_text(name) for name in announced}
        for raw in await self._redis.hvals(self._keys_hash):
            name = _blocking_name(raw)
            if name is not None:
                names.add(name)
        return frozenset(names)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _blocking_name(raw: bytes | str) -> str | None:
    """The tenant's name when this keys-hash entry is a blocking-mode tenant, else None."""
    try:
        spec = json.loads(raw)
    except (ValueError, TypeError):
        # Safe: a bad entry is refused by the gateway as an unknown key, so no request can carry
        # its tenant through the gateway; it is not ours to report (the gateway logs it).
        return None
    if isinstance(spec, dict) and spec.get("guard_mode") == "blocking" and isinstance(spec.get("name"), str):
        return spec["name"]
    return None
