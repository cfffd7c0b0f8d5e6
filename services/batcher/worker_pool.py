"""The workers a batcher can send to, and the policy that picks one.

The pool mirrors the worker registry (Redis): it opens one gRPC channel per worker, closes channels
of workers that left, and tracks the work it has outstanding on each (requests and tokens).

Policies (`LGC_BATCHER_LB_POLICY`):

- `round_robin`: the next worker in id order.
- `least_outstanding`: fewest outstanding tokens per batch slot (tokens, not connections: a batch
  of 30 long requests weighs more than one short one), then fewest requests.
- `weighted`: smooth weighted round robin (nginx's algorithm) with each worker's registered
  capacity as its weight: capacities 3 and 1 get batches 3:1, interleaved.
- `prefix_affinity`: rendezvous (highest-random-weight) hashing of the prompt prefix onto the
  workers, so the same prefix lands on the same worker (its prompt cache) and a worker joining or
  leaving moves only its own share of prefixes; when that worker is saturated (outstanding requests
  at least `capacity × saturation`) it falls back to `least_outstanding`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from dataclasses import dataclass, field

import grpc

from shared.protos import worker_pb2_grpc
from shared.worker_registry import WorkerInfo

__all__ = ["LB_POLICIES", "WorkerHandle", "WorkerPool"]

#: Policy names `pick` understands.
LB_POLICIES = ("round_robin", "least_outstanding", "weighted", "prefix_affinity")

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkerHandle:
    """One worker: what it registered, a channel to it, and this batcher's work on it."""

    info: WorkerInfo
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.WorkerStub
    outstanding_requests: int = 0
    outstanding_tokens: int = 0
    failures: int = 0
    _wrr_current: int = field(default=0, repr=False)
    """Smooth weighted round robin state."""

    @property
    def worker_id(self) -> str:
        return self.info.worker_id

    @property
    def free_slots(self) -> int:
        return self.info.capacity - self.outstanding_requests

    def acquire(self, requests: int, tokens: int) -> None:
        self.outstanding_requests += requests
        self.outstanding_tokens += tokens

    def release(self, requests: int, tokens: int) -> None:
        self.outstanding_requests = max(0, self.outstanding_requests - requests)
        self.outstanding_tokens = max(0, self.outstanding_tokens - tokens)


class WorkerPool:
    """Workers known to this batcher, kept in step with the registry."""

    def __init__(
        self, policy: str = "least_outstanding", *, saturation: float = 1.0, close_grace_s: float = 600.0
    ) -> None:
        if policy not in LB_POLICIES:
            raise ValueError(f"unknown balancing policy {policy!r}; known: {', '.join(LB_POLICIES)}")
        self.policy = policy
        self.saturation = saturation
        self.close_grace_s = close_grace_s
        """Longest the channel of a worker that left stays open for the calls still running on it."""
        self._retiring: dict[asyncio.Task[None], WorkerHandle] = {}
        self._workers: dict[str, WorkerHandle] = {}
        self._rr = itertools.count()
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._workers)

    @property
    def workers(self) -> list[WorkerHandle]:
        return list(self._workers.values())

    def capacity(self) -> int:
        """Batch slots of every usable worker together."""
        return sum(w.info.capacity for w in self._workers.values() if not w.info.draining)

    def models(self) -> set[str]:
        return {w.info.model for w in self._workers.values() if not w.info.draining}

    def models_with_free_slots(self) -> set[str]:
        """Models with at least one usable worker that has a free batch slot (by this batcher's count)."""
        return {w.info.model for w in self._workers.values() if not w.info.draining and w.free_slots > 0}

    async def sync(self, infos: list[WorkerInfo]) -> None:
        """Match the pool to the registry: add new workers, update known ones, drop gone ones."""
        seen = set()
        for info in infos:
            seen.add(info.worker_id)
            handle = self._workers.get(info.worker_id)
            if handle is not None and handle.info.address == info.address:
                handle.info = info
                continue
            if handle is not None:  # same id, new address: a restarted worker
                await handle.channel.close()
            channel = grpc.aio.insecure_channel(
                info.address,
                options=[
                    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                    ("grpc.max_send_message_length", 16 * 1024 * 1024),
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 5_000),
                ],
            )
            self._workers[info.worker_id] = WorkerHandle(info, channel, worker_pb2_grpc.WorkerStub(channel))
            log.info("worker joined", extra={"worker": info.worker_id, "address": info.address, "model": info.model})
        for worker_id in set(self._workers) - seen:
            self._retire(self._workers.pop(worker_id))
            log.info("worker left", extra={"worker": worker_id})
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, model: str, timeout_s: float) -> WorkerHandle | None:
        """Wait up to `timeout_s` for a worker serving `model` (woken by `sync`, no polling)."""
        async def found() -> WorkerHandle:
            async with self._changed:
                await self._changed.wait_for(lambda: self.pick(model) is not None)
            return self.pick(model)  # type: ignore[return-value]

        try:
            return await asyncio.wait_for(found(), timeout=timeout_s)
        except TimeoutError:
            return None  # Safe: the caller ends the requests with an explicit error.

    def pick(
        self, model: str, *, exclude: set[str] = frozenset(), tokens: int = 0, prefix: str | None = None
    ) -> WorkerHandle | None:
        """A worker serving `model`, not draining and not in `exclude`, by policy; None if none.

        `tokens` is the work about to be sent (for `least_outstanding`); `prefix` the prompt prefix
        (for `prefix_affinity`; without one that policy behaves as `least_outstanding`)."""
        candidates = [
            w for w in self._workers.values() if w.info.model == model and not w.info.draining and w.worker_id not in exclude
        ]
        if not candidates:
            return None
        if self.policy == "round_robin":
            candidates.sort(key=lambda w: w.worker_id)
            return candidates[next(self._rr) % len(candidates)]
        if self.policy == "weighted":
            return self._weighted(candidates)
        if self.policy == "prefix_affinity" and prefix:
            home = max(candidates, key=lambda w: _rendezvous(prefix, w.worker_id))
            if home.outstanding_requests < home.info.capacity * self.saturation:
                return home
        return _least_outstanding(candidates, tokens)

    @staticmethod
    def _weighted(candidates: list[WorkerHandle]) -> WorkerHandle:
        total = 0
        best: WorkerHandle | None = None
        for w in sorted(candidates, key=lambda w: w.worker_id):
            w._wrr_current += w.info.capacity  # noqa: SLF001 - the pool owns this state
            total += w.info.capacity
            if best is None or w._wrr_current > best._wrr_current:  # noqa: SLF001
                best = w
        assert best is not None
        best._wrr_current -= total  # noqa: SLF001
        return best

    def _retire(self, handle: WorkerHandle) -> None:
        """Close a departed worker's channel once the calls still running on it have ended (a
        draining worker finishes them; a hung one's are cancelled by the dispatcher's stream
        watchdog), or after `close_grace_s`. Closing at once would cancel them mid-stream."""
        task = asyncio.create_task(handle.channel.close(grace=self.close_grace_s), name=f"close-{handle.worker_id}")
        self._retiring[task] = handle
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        handles = [*self._workers.values(), *self._retiring.values()]
        for handle in handles:
            await handle.channel.close()  # no grace: the batcher is stopping
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self._workers.clear()


def _least_outstanding(candidates: list[WorkerHandle], tokens: int) -> WorkerHandle:
    """Fewest outstanding tokens per slot of capacity, then fewest requests, then id."""
    return min(
        candidates,
        key=lambda w: ((w.outstanding_tokens + tokens) / w.info.capacity, w.outstanding_requests, w.worker_id),
    )


def _rendezvous(prefix: str, worker_id: str) -> int:
    """Highest-random-weight score of `worker_id` for `prefix` (stable across processes)."""
    digest = hashlib.blake2b(f"{worker_id}\x00{prefix}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
