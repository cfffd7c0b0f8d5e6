"""WorkerPool.pick under each balancing policy (real gRPC channels; no call is made), and what
happens to calls running on a worker that leaves (a real simulated worker)."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest

from services.batcher.worker_pool import WorkerPool
from services.worker.service import WorkerService
from shared.protos import worker_pb2
from shared.settings import ClusterSettings
from shared.worker_registry import WorkerInfo
from tests.services.batcher.harness import WorkerSpec, worker_settings


def _info(worker_id: str, capacity: int = 4, model: str = "m", draining: bool = False) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id, address=f"127.0.0.1:{1000 + hash(worker_id) % 1000}", model=model, backend="simulated",
        capacity=capacity, draining=draining,
    )


async def _pool(policy: str, *infos: WorkerInfo, saturation: float = 1.0) -> WorkerPool:
    pool = WorkerPool(policy, saturation=saturation)
    await pool.sync(list(infos))
    return pool


async def test_round_robin_cycles_in_id_order() -> None:
    pool = await _pool("round_robin", _info("b"), _info("a"), _info("c"))
    picks = [pool.pick("m").worker_id for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    await pool.close()


async def test_least_outstanding_weighs_tokens_per_slot() -> None:
    pool = await _pool("least_outstanding", _info("a", capacity=2), _info("b", capacity=8))
    a, b = (next(w for w in pool.workers if w.worker_id == x) for x in "ab")
    a.acquire(1, 100)  # 50 tokens per slot
    b.acquire(4, 320)  # 40 tokens per slot: busier by requests, lighter by tokens per slot
    assert pool.pick("m").worker_id == "b"
    b.acquire(1, 200)
    assert pool.pick("m").worker_id == "a"
    await pool.close()


async def test_weighted_follows_capacity_and_interleaves() -> None:
    pool = await _pool("weighted", _info("a", capacity=3), _info("b", capacity=1))
    picks = [pool.pick("m").worker_id for _ in range(8)]
    assert Counter(picks) == {"a": 6, "b": 2}
    assert picks[:4].count("b") == 1  # spread out, not a a a a a a b b
    await pool.close()


async def test_prefix_affinity_is_sticky_and_falls_back_when_saturated() -> None:
    pool = await _pool("prefix_affinity", _info("a", capacity=2), _info("b", capacity=2), _info("c", capacity=2))
    homes = {p: pool.pick("m", prefix=p).worker_id for p in (f"prompt {i}" for i in range(30))}
    assert all(pool.pick("m", prefix=p).worker_id == w for p, w in homes.items())  # sticky
    assert len(set(homes.values())) == 3  # prefixes spread over the workers
    prefix, home = next(iter(homes.items()))
    handle = next(w for w in pool.workers if w.worker_id == home)
    handle.acquire(2, 10)  # every slot busy: saturated
    other = pool.pick("m", prefix=prefix)
    assert other.worker_id != home
    handle.release(1, 5)
    assert pool.pick("m", prefix=prefix).worker_id == home
    await pool.close()


async def test_prefix_affinity_moves_only_the_leaving_workers_prefixes() -> None:
    infos = [_info(x) for x in "abc"]
    pool = await _pool("prefix_affinity", *infos)
    before = {p: pool.pick("m", prefix=p).worker_id for p in (f"p{i}" for i in range(60))}
    await pool.sync(infos[:2])  # c leaves
    after = {p: pool.pick("m", prefix=p).worker_id for p in before}
    assert all(after[p] == w for p, w in before.items() if w != "c")
    await pool.close()


async def test_pick_skips_other_models_draining_and_excluded() -> None:
    pool = await _pool("least_outstanding", _info("a"), _info("b", draining=True), _info("c", model="other"))
    assert pool.pick("m").worker_id == "a"
    assert pool.pick("m", exclude={"a"}) is None
    assert pool.pick("nope") is None
    assert pool.capacity() == 8
    await pool.close()


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown balancing policy"):
        WorkerPool("random")


async def test_a_worker_leaving_the_registry_keeps_its_running_streams(cluster_settings: ClusterSettings) -> None:
    """A worker that leaves the registry (drained, or its entry expired) may still be streaming
    for this batcher: its channel closes only once those calls have ended, not by cancelling them."""
    settings = worker_settings(cluster_settings, "sim-leaving", WorkerSpec(capacity=2, tokens_per_s=100, ttft_ms=5))
    worker = WorkerService(settings)
    await worker.start()
    pool = WorkerPool("round_robin")
    try:
        info = WorkerInfo(
            worker_id="sim-leaving", address=f"127.0.0.1:{settings.worker_grpc_port}", model="simulated",
            backend="simulated", capacity=2,
        )
        await pool.sync([info])
        handle = pool.pick("simulated")
        assert handle is not None
        item = worker_pb2.WorkItem(request_id="r-1", prompt="hi", params=worker_pb2.SamplingParams(max_new_tokens=30))
        call = handle.stub.Generate(worker_pb2.GenerateRequest(items=[item]), timeout=30)
        kinds = [(await call.read()).WhichOneof("event")]  # the stream is running
        await pool.sync([])  # the worker left the registry mid-stream
        assert pool.pick("simulated") is None
        while (event := await call.read()) is not grpc.aio.EOF:
            kinds.append(event.WhichOneof("event"))
        assert kinds[-1] == "finished"  # not cancelled: it ran to its end
        assert kinds.count("delta") == 30
    finally:
        await pool.close()
        await worker.stop()
