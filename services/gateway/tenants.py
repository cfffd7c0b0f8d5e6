"""Tenants and API keys: who is asking, with which priorities and limits.

Keys come from a file (`LGC_API_KEYS_FILE`, YAML or JSON: `{key: {name, default_priority,
max_priority, requests_per_min, tokens_per_min, max_concurrent, guard_mode}}`) and/or from Redis (hash
`<prefix>:apikeys`, field = SHA-256 hex of the key, value = the tenant as JSON), so keys can be added
to a running cluster. With neither, the gateway runs open: every request is tenant `default`.

Keys are never logged or stored in clear in Redis: logs carry :func:`key_fingerprint`, a short hash.
A requested priority above the tenant's `max_priority` is capped to it (not refused): clients that
always ask for `high` keep working, at the priority they are entitled to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from shared.blocking_tenants import api_keys_hash
from shared.records import GuardMode, Priority

from services.gateway.errors import EngineUnavailableError, UnauthorizedError

__all__ = [
    "OPEN_TENANT",
    "Tenant",
    "TenantDirectory",
    "TenantSpec",
    "cap_priority",
    "key_fingerprint",
    "load_keys_file",
    "redis_keys_hash",
]

log = logging.getLogger(__name__)

#: The tenant of every request in open mode.
OPEN_TENANT = "default"

_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


class TenantSpec(BaseModel):
    """One tenant as written in the keys file or in Redis (0 for a limit means unlimited)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    default_priority: Priority = Priority.NORMAL
    max_priority: Priority = Priority.HIGH
    requests_per_min: int = Field(0, ge=0, le=100_000_000)
    tokens_per_min: int = Field(0, ge=0, le=1_000_000_000)
    max_concurrent: int = Field(0, ge=0, le=1_000_000)
    guard_mode: GuardMode = GuardMode.ASYNC
    """`async`: answers are judged after delivery; `blocking`: the gateway sends an answer only
    after the guardian's verdict (blocked answers never leave); `off`: not judged."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """An authenticated caller."""

    name: str
    default_priority: Priority = Priority.NORMAL
    max_priority: Priority = Priority.HIGH
    requests_per_min: int = 0
    tokens_per_min: int = 0
    max_concurrent: int = 0
    guard_mode: GuardMode = GuardMode.ASYNC
    """How the guardian treats this tenant's answers (see TenantSpec)."""
    key_id: str = "-"
    """Fingerprint of the key used (`-` in open mode); safe to log."""

    @classmethod
    def from_spec(cls, spec: TenantSpec, key_id: str) -> Tenant:
        return cls(
            name=spec.name,
            default_priority=cap_priority(spec.default_priority, spec.max_priority),
            max_priority=spec.max_priority,
            requests_per_min=spec.requests_per_min,
            tokens_per_min=spec.tokens_per_min,
            max_concurrent=spec.max_concurrent,
            guard_mode=spec.guard_mode,
            key_id=key_id,
        )


def cap_priority(requested: Priority, maximum: Priority) -> Priority:
    """`requested`, lowered to `maximum` when it is above it."""
    return requested if _RANK[requested] <= _RANK[maximum] else maximum


def key_hash(key: str) -> str:
    """SHA-256 hex of a key (how Redis stores keys, and the lookup index of file keys)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_fingerprint(key: str) -> str:
    """A short hash of a key, for logs (never the key itself)."""
    return key_hash(key)[:12]


def redis_keys_hash(prefix: str) -> str:
    """The Redis hash holding API keys (field: key_hash, value: TenantSpec JSON)."""
    return api_keys_hash(prefix)


def load_keys_file(path: Path) -> dict[str, TenantSpec]:
    """Key hash -> tenant from a YAML or JSON file; ValueError naming the problem when it is bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {path}: {exc}") from exc
    try:
        data: Any = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"the API keys file {path} is not valid JSON/YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"the API keys file {path} must map API keys to tenants")
    out: dict[str, TenantSpec] = {}
    for key, value in data.items():
        if not isinstance(key, str) or len(key) < 8:
            raise ValueError(f"the API keys file {path} has a key shorter than 8 characters")
        try:
            out[key_hash(key)] = TenantSpec.model_validate(value)
        except ValidationError as exc:
            raise ValueError(f"the API keys file {path} has a bad tenant for key {key_fingerprint(key)}: {exc}") from exc
    return out


class TenantDirectory:
    """Maps `Authorization: Bearer <key>` to a Tenant."""

    def __init__(
        self,
        file_keys: dict[str, TenantSpec],
        *,
        redis: aioredis.Redis | None,
        prefix: str,
        open_tenant: Tenant,
    ) -> None:
        self._file_keys = file_keys
        self._redis = redis
        self._hash = redis_keys_hash(prefix)
        self._open_tenant = open_tenant
        self.open = False
        """True when no keys are configured: every request is the open tenant."""

    async def start(self) -> None:
        """Decide between open mode and keys (keys in the file, or any in Redis at start)."""
        has_redis_keys = False
        if self._redis is not None:
            has_redis_keys = bool(await self._redis.hlen(self._hash))
        self.open = not self._file_keys and not has_redis_keys
        if self.open:
            log.warning(
                "the gateway runs OPEN: no API keys are configured, every request is served as tenant %r",
                self._open_tenant.name,
            )
        else:
            log.info(
                "API keys required",
                extra={"file_keys": len(self._file_keys), "redis_keys": has_redis_keys},
            )

    def blocking_tenants(self) -> frozenset[str]:
        """The tenants this gateway knows to be in blocking guard mode (keys file, or the open
        tenant in open mode); the batchers learn Redis-keyed ones from Redis themselves."""
        if self.open:
            blocking = self._open_tenant.guard_mode is GuardMode.BLOCKING
            return frozenset({self._open_tenant.name}) if blocking else frozenset()
        return frozenset(spec.name for spec in self._file_keys.values() if spec.guard_mode is GuardMode.BLOCKING)

    async def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of a request's `Authorization` value; UnauthorizedError when keys are
        required and it is missing or unknown."""
        if self.open:
            return self._open_tenant
        key = _bearer_key(authorization)
        if key is None:
            raise UnauthorizedError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        digest = key_hash(key)
        key_id = digest[:12]
        spec = self._file_keys.get(digest)
        if spec is None and self._redis is not None:
            spec = await self._redis_spec(digest, key_id)
        if spec is None:
            log.info("unknown API key", extra={"key_id": key_id})
            raise UnauthorizedError(f"Incorrect API key provided (key id {key_id}).")
        return Tenant.from_spec(spec, key_id)

    async def _redis_spec(self, digest: str, key_id: str) -> TenantSpec | None:
        assert self._redis is not None
        try:
            raw = await self._redis.hget(self._hash, digest)
        except (RedisError, OSError) as exc:
            # The client gets 503 (the key could not be checked), not 401.
            raise EngineUnavailableError(f"API keys cannot be checked right now: {exc}") from exc
        if raw is None:
            return None
        try:
            return TenantSpec.model_validate_json(raw)
        except ValidationError:
            # A bad entry is an operator's mistake: logged, and the key is refused like an unknown one.
            log.error("bad tenant JSON in Redis for an API key", extra={"key_id": key_id})
            return None


def _bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
