"""oneDNN-prepacked linears: same outputs as `nn.Linear`, applied only where they can run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from torch import nn

from services.worker.engine import SamplingParams, WorkItem
from services.worker.packed_linear import PackedLinear, packing_applies, prepack_linears
from services.worker.settings import WorkerSettings
from services.worker.transformers_engine import TransformersEngine
from tests.services.worker.engine_runs import run_item


#: oneDNN packs bfloat16 weights only on CPUs with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; on
#: others (AVX2 only) `prepack_linears` finds out by probing and leaves the linears plain.
BFLOAT16 = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(
        not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        reason="this CPU has no oneDNN bfloat16 kernels (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)",
    ),
    id="bfloat16",
)


@pytest.mark.parametrize("dtype", [BFLOAT16, pytest.param(torch.float32, id="float32")])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_linear(dtype: torch.dtype, bias: bool) -> None:
    torch.manual_seed(1)
    linear = nn.Linear(64, 96, bias=bias).to(dtype)
    packed = PackedLinear(linear)
    for shape in [(5, 64), (2, 7, 64), (1, 1, 64)]:
        x = torch.randn(*shape, dtype=dtype)
        with torch.no_grad():
            expected, got = linear(x), packed(x)
        assert got.shape == expected.shape and got.dtype == dtype
        torch.testing.assert_close(got, expected)
    assert (packed.in_features, packed.out_features) == (64, 96)


class _Block(nn.Module):
    """Linears at two depths, one of them a subclass (as quantized layers are)."""

    class _Special(nn.Linear):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16, bias=False))
        self.special = _Block._Special(16, 16)
        self.head = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.special(self.inner(x)))


@pytest.mark.parametrize("dtype", [BFLOAT16, pytest.param(torch.float32, id="float32")])
def test_prepack_replaces_plain_linears_only_and_keeps_outputs(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    model = _Block().to(dtype)
    x = torch.randn(4, 16, dtype=dtype)
    with torch.no_grad():
        before = model(x)
        replaced = prepack_linears(model)
        after = model(x)
    assert replaced == 3
    assert isinstance(model.inner[0], PackedLinear) and isinstance(model.inner[2], PackedLinear)
    assert isinstance(model.head, PackedLinear)
    assert type(model.special) is _Block._Special  # a subclass keeps its own forward
    torch.testing.assert_close(after, before)


@pytest.mark.skipif(torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU packs bfloat16; nothing to refuse")
def test_bfloat16_linears_stay_plain_where_the_cpu_cannot_pack_them() -> None:
    model = _Block().to(torch.bfloat16)
    assert prepack_linears(model) == 0  # the probe's failure is caught: no crash at start
    assert type(model.head) is nn.Linear


def test_prepack_leaves_unpackable_dtypes_alone() -> None:
    model = _Block().to(torch.float16)
    assert not packing_applies(model)
    assert prepack_linears(model) == 0
    assert type(model.head) is nn.Linear


def test_prepack_of_a_model_without_linears_does_nothing() -> None:
    model = nn.Sequential(nn.ReLU())
    assert prepack_linears(model) == 0


def _greedy_texts(engine: TransformersEngine, prompts: list[str]) -> list[str]:
    async def run() -> list[str]:
        items = [WorkItem(f"r{i}", prompt=p, params=SamplingParams(max_new_tokens=16)) for i, p in enumerate(prompts)]
        results = await asyncio.gather(*(run_item(engine, item) for item in items))
        return [r.text for r in results]

    return asyncio.run(run())


def test_real_model_packed_generates_what_plain_generates(model_state_dir: Path) -> None:
    """SmolLM2 in bfloat16 (the CPU default): every linear packed, and the same greedy text."""
    prompts = ["The capital of France is", "def fibonacci(n):"]
    texts = {}
    for prepack in (True, False):
        engine = TransformersEngine(WorkerSettings(state_dir=model_state_dir, worker_prepack_weights=prepack))
        engine.load()
        packed_layers = sum(isinstance(m, PackedLinear) for m in engine.model.modules())
        plain_layers = sum(type(m) is nn.Linear for m in engine.model.modules())
        if prepack:
            assert packed_layers > 0 and plain_layers == 0
        else:
            assert packed_layers == 0 and plain_layers > 0
        engine.start_thread()
        try:
            texts[prepack] = _greedy_texts(engine, prompts)
        finally:
            engine.close()
    assert all(texts[True])
    assert texts[True] == texts[False]
