"""The verdict cache: repeated content is judged once.

Key: `<prefix>:guardian:verdict:<sha256(evaluator version, kind, text)>`; the evaluator's version
changes with any detector, detector version or policy setting, so an upgrade never re-issues an old
judgement. Value: the complete verdict as JSON, for `ttl_s` seconds. Only complete verdicts (every
detector ran) are stored, so a text sampled out under lag is judged in full when it comes again.
A hit is re-issued under the new request id and tenant with `cached: true`.

Verdicts do not depend on the tenant (detectors see only the text and its kind), so tenants share
entries. Lookups for a whole batch are one MGET, and stores one script call that sets every key with
its TTL (one command to encode instead of one per verdict: redis-py's per-command cost dominated
the guardian's own overhead). Redis failures make the cache a no-op (logged), never a failed batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.guardian.subjects import Subject
from shared.records import GuardianVerdict, now

__all__ = ["VerdictCache"]

log = logging.getLogger(__name__)

#: SET key value EX ttl for every KEYS[i] / ARGV[i + 1], ARGV[1] being the TTL.
_SET_ALL_WITH_TTL = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
end
return #KEYS
"""


class VerdictCache:
    """Verdicts in Redis by content hash."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, ttl_s: int, version: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._version = version
        self._set_all = redis.register_script(_SET_ALL_WITH_TTL)

    def key(self, subject: Subject) -> str:
        digest = hashlib.sha256(
            f"{self._version}\0{subject.kind}\0".encode() + subject.text.encode("utf-8", "surrogatepass")
        ).hexdigest()
        return f"{self._prefix}:guardian:verdict:{digest}"

    async def get_many(self, subjects: Sequence[Subject]) -> list[GuardianVerdict | None]:
        """The cached verdict for each subject, re-issued for its request (None: a miss)."""
        if not subjects:
            return []
        try:
            raw = await self._redis.mget([self.key(s) for s in subjects])
        except (RedisError, OSError):
            # Safe: without the cache every text is a miss and is judged; nothing is lost.
            log.warning("verdict cache lookup failed; judging the batch in full", exc_info=True)
            return [None] * len(subjects)
        out: list[GuardianVerdict | None] = []
        for subject, value in zip(subjects, raw):
            if value is None:
                out.append(None)
                continue
            try:
                stored = GuardianVerdict.from_bytes(value)
            except (ValidationError, ValueError):
                # Safe: a bad entry (written by a newer guardian?) is a miss and gets overwritten.
                out.append(None)
                continue
            out.append(
                stored.model_copy(
                    update={
                        "request_id": subject.request_id,
                        "tenant": subject.tenant,
                        "cached": True,
                        "latency_ms": 0.0,
                        "created_at": now(),
                    }
                )
            )
        return out

    async def put_many(self, entries: Sequence[tuple[Subject, GuardianVerdict]]) -> None:
        """Store complete verdicts (callers pass only those) with the TTL."""
        if not entries:
            return
        try:
            await self._set_all(
                keys=[self.key(subject) for subject, _ in entries],
                args=[self._ttl_s, *(verdict.to_bytes() for _, verdict in entries)],
            )
        except (RedisError, OSError):
            # Safe: the verdicts were published; the same content is only judged again next time.
            log.warning("could not store verdicts in the cache", exc_info=True)
