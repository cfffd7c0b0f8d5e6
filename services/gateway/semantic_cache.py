"""The semantic cache: answers to *paraphrases* of earlier requests, from Qdrant.

What is compared is the request's last user turn (or its prompt), embedded with all-MiniLM-L6-v2.
Everything else must match exactly, through the `scope` payload filter: tenant, model, every
generation parameter, and the conversation before the last turn (hashed). A candidate above
`gateway_semantic_threshold` cosine similarity hits only if the false-hit guard agrees that both
queries have the same negations, numbers, units, names and comparison directions.

Qdrant runs in qdrant-client's local mode under `<state_dir>/qdrant/<instance>` unless
`LGC_QDRANT_URL` is set (a local-mode directory is locked by one process, hence per instance).
Entries carry `expires_at` and are filtered by it; expired points are deleted now and then. A
local-mode store starts empty at each start (see `start`); a server's collection is kept.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from qdrant_client import AsyncQdrantClient, models

from shared.records import GenerationRequest

from services.gateway.exact_cache import CachedAnswer, request_index_key, scope_fingerprint
from services.gateway.false_hit_guard import extract_features, same_meaning
from services.gateway.sentence_embedder import EMBEDDING_DIM, SentenceEmbedder

__all__ = ["SemanticCache", "SemanticProbe", "semantic_query_text"]

log = logging.getLogger(__name__)

#: Candidates looked at per lookup (the best one may be refused by the guard).
_CANDIDATES = 5
#: Private local-mode directories (client id -> path), removed when their cache closes.
_PRIVATE_DIRS: dict[int, Path] = {}
#: Unfiltered page size of a local-mode lookup (see find).
_LOCAL_PAGE = 32
#: Stores between two sweeps of expired points.
_SWEEP_EVERY = 200


def semantic_query_text(request: GenerationRequest) -> str | None:
    """The text compared: the last turn when it is the user's, or the prompt."""
    if request.prompt is not None:
        return request.prompt
    if request.messages and request.messages[-1].role == "user":
        return request.messages[-1].content
    return None


@dataclass(frozen=True, slots=True)
class SemanticProbe:
    """A request ready for the semantic cache: its scope, query text and embedding."""

    scope: str
    query: str
    vector: list[float]


class SemanticCache:
    """Qdrant-backed paraphrase cache."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        embedder: SentenceEmbedder,
        *,
        collection: str,
        threshold: float,
        ttl_s: int,
        redis_index: object | None = None,
        prefix: str = "lgc",
        max_query_chars: int = 2_000,
    ) -> None:
        self._client = client
        self._embedder = embedder
        self.collection = collection
        self._threshold = threshold
        self._ttl_s = ttl_s
        self._redis = redis_index
        self._prefix = prefix
        self._max_query_chars = max_query_chars
        self._stores = 0
        self._local = not client.init_options.get("url")

    @classmethod
    def open_client(cls, *, url: str | None, path: Path) -> AsyncQdrantClient:
        """A client of the Qdrant server at `url`, or local mode in `path`. A local directory is
        locked by one process: when another holds it (a second gateway with the same instance id
        and state dir), a fresh private directory beside it is used instead, removed at close."""
        if url:
            return AsyncQdrantClient(url=url)
        path.mkdir(parents=True, exist_ok=True)
        try:
            return AsyncQdrantClient(path=str(path))
        except RuntimeError:
            # Safe: the semantic cache is per instance in local mode anyway; this one starts empty.
            private = Path(tempfile.mkdtemp(prefix=f"{path.name}-", dir=path.parent))
            log.warning("Qdrant local directory in use by another process; using a private one",
                        extra={"path": str(path), "private": str(private)})
            client = AsyncQdrantClient(path=str(private))
            _PRIVATE_DIRS[id(client)] = private
            return client

    async def start(self) -> None:
        await self._embedder.load()
        if self._local and await self._client.collection_exists(self.collection):
            # A local store is this instance's alone and outlives the process, while the purge
            # index lives in Redis, which may not have: start empty rather than serve answers a
            # guardian verdict could no longer reach.
            await self._client.delete_collection(self.collection)
        if not await self._client.collection_exists(self.collection):
            await self._client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=EMBEDDING_DIM, distance=models.Distance.COSINE),
            )
            if not self._local:
                # Only a server has payload indexes (local mode scans); they make the filter fast.
                await self._client.create_payload_index(self.collection, "scope", models.PayloadSchemaType.KEYWORD)

    async def close(self) -> None:
        await self._client.close()
        private = _PRIVATE_DIRS.pop(id(self._client), None)
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)

    def applies_to(self, request: GenerationRequest) -> bool:
        query = semantic_query_text(request)
        return query is not None and 0 < len(query) <= self._max_query_chars

    async def probe(self, request: GenerationRequest) -> SemanticProbe:
        query = semantic_query_text(request)
        assert query is not None
        # The scope holds everything but the compared text: the earlier turns of a chat, or a
        # marker for completions (a chat answer must never serve a text completion).
        if request.messages:
            prior = request.model_copy(update={"messages": request.messages[:-1] or None, "prompt": None})
        else:
            prior = request.model_copy(update={"messages": None, "prompt": "\x00completion"})
        scope = scope_fingerprint(prior, with_input=True)
        vector = await self._embedder.encode(query)
        return SemanticProbe(scope=scope, query=query, vector=vector)

    async def find(self, probe: SemanticProbe) -> tuple[CachedAnswer, str] | None:
        """The best guarded hit for the probe and its point id, or None."""
        now = time.time()
        points = None
        if self._local:
            # Local mode evaluates payload filters in Python, point by point (~15 us each); a
            # query without a filter is a vectorised scan. Above the threshold only near duplicates
            # come back, so the scope is checked here; a full page falls back to the filter.
            result = await self._client.query_points(
                self.collection, query=probe.vector, limit=_LOCAL_PAGE, score_threshold=self._threshold, with_payload=True
            )
            if len(result.points) < _LOCAL_PAGE:
                points = [
                    p for p in result.points
                    if (p.payload or {}).get("scope") == probe.scope and float((p.payload or {}).get("expires_at", 0)) > now
                ][:_CANDIDATES]
        if points is None:
            result = await self._client.query_points(
                self.collection,
                query=probe.vector,
                query_filter=models.Filter(
                    must=[
                        models.FieldCondition(key="scope", match=models.MatchValue(value=probe.scope)),
                        models.FieldCondition(key="expires_at", range=models.Range(gt=now)),
                    ]
                ),
                limit=_CANDIDATES,
                score_threshold=self._threshold,
                with_payload=True,
            )
            points = result.points
        if not points:
            return None
        features = extract_features(probe.query)
        for point in points:
            payload = point.payload or {}
            candidate = str(payload.get("query", ""))
            if same_meaning(features, extract_features(candidate)):
                return CachedAnswer.model_validate_json(str(payload["answer"])), str(point.id)
            log.info("semantic candidate refused by the false-hit guard", extra={"score": round(point.score, 3)})
        return None

    async def store(self, probe: SemanticProbe, answer: CachedAnswer) -> str:
        """Store an answer for the probe; returns the point id."""
        point_id = str(uuid.uuid5(uuid.NAMESPACE_URL, hashlib.sha256(f"{probe.scope}\0{probe.query}".encode("utf-8", "surrogatepass")).hexdigest()))
        answer = answer.model_copy(update={"query": probe.query})
        await self._client.upsert(
            self.collection,
            points=[
                models.PointStruct(
                    id=point_id,
                    vector=probe.vector,
                    payload={
                        "scope": probe.scope,
                        "query": probe.query,
                        "answer": answer.model_dump_json(),
                        "request_id": answer.source_request_id,
                        "expires_at": time.time() + self._ttl_s,
                    },
                )
            ],
        )
        if self._redis is not None:
            index = request_index_key(self._prefix, answer.source_request_id)
            await self._redis.sadd(index, f"semantic:{point_id}")  # type: ignore[attr-defined]
            await self._redis.expire(index, self._ttl_s)  # type: ignore[attr-defined]
        self._stores += 1
        if self._stores % _SWEEP_EVERY == 0:
            await self.sweep()
        return point_id

    async def delete(self, point_ids: list[str]) -> None:
        if point_ids:
            await self._client.delete(self.collection, points_selector=models.PointIdsList(points=point_ids))

    async def sweep(self) -> None:
        """Delete expired points."""
        await self._client.delete(
            self.collection,
            points_selector=models.FilterSelector(
                filter=models.Filter(must=[models.FieldCondition(key="expires_at", range=models.Range(lt=time.time()))])
            ),
        )
