"""Precision plans: what each device accepts, what it refuses at start, and int8 on CPU with the
real SmolLM2 model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.worker.engine import SamplingParams, SequenceFinished, WorkItem
from services.worker import precision
from services.worker.engine_factory import BackendUnavailableError, build_engine
from services.worker.precision import UnsupportedPrecisionError, load_options, plan_precision
from services.worker.settings import WorkerSettings
from services.worker.transformers_engine import TransformersEngine
from shared.model_store import prepare_model, resolve_model
from tests.services.worker.engine_runs import run_item


def model_dir(state_dir: Path) -> Path:
    return Path(prepare_model(resolve_model("smollm2"), state_dir).path)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("dtype", "quantization", "expected_dtype", "label"),
    [
        ("bfloat16", "none", torch.bfloat16, "bfloat16"),
        ("float32", "none", torch.float32, "float32"),
        ("auto", "int8", torch.float32, "int8"),
        ("float32", "int8", torch.float32, "int8"),
    ],
)
def test_cpu_plans(dtype: str, quantization: str, expected_dtype: torch.dtype, label: str) -> None:
    plan = plan_precision(CPU, dtype, quantization, compile=False)  # type: ignore[arg-type]
    assert (plan.dtype, plan.quantization, plan.label) == (expected_dtype, quantization, label)
    # No bitsandbytes config on CPU: int8 is applied after loading, by torch.
    assert load_options(plan) == {"dtype": expected_dtype}


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_is_bfloat16_only_where_the_cpu_computes_it(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(precision, "cpu_computes_bfloat16", lambda: native)
    plan = plan_precision(CPU, "auto", "none", compile=False)
    assert (plan.dtype, plan.label) == (expected, str(expected).removeprefix("torch."))
    # An explicit choice is kept either way.
    assert plan_precision(CPU, "bfloat16", "none", compile=False).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("dtype", "quantization", "message"),
    [
        ("float16", "none", "float16 is not supported on CPU"),
        ("auto", "nf4", "nf4 needs bitsandbytes on a CUDA device"),
        ("bfloat16", "int8", "cannot be combined"),
    ],
)
def test_cpu_refuses_what_it_cannot_run(dtype: str, quantization: str, message: str) -> None:
    with pytest.raises(UnsupportedPrecisionError, match=message):
        plan_precision(CPU, dtype, quantization, compile=False)  # type: ignore[arg-type]


def test_refusal_happens_when_the_engine_is_built_before_any_model_loads() -> None:
    # UnsupportedPrecisionError is a BackendUnavailableError: the worker's entry point reports it
    # and exits 1 (see test_main), without loading the model first.
    with pytest.raises(BackendUnavailableError, match="nf4"):
        build_engine(WorkerSettings(worker_device="cpu", worker_quantization="nf4"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(UnsupportedPrecisionError, match="CUDA is not available"):
        build_engine(WorkerSettings(worker_device="cuda"))


async def test_int8_on_cpu_generates_with_the_real_model(model_state_dir: Path) -> None:
    engine = TransformersEngine(
        WorkerSettings(state_dir=model_state_dir, worker_quantization="int8", worker_max_model_len=256)
    )
    engine.load()
    engine.start_thread()
    try:
        assert engine.info.dtype == "int8"
        # Every Linear (the tied LM head included) was replaced by its dynamically quantized form.
        linears = [m for m in engine.model.modules() if type(m) is torch.nn.Linear]
        assert linears == []
        result = await run_item(
            engine, WorkItem("q", prompt="The capital of France is", params=SamplingParams(max_new_tokens=6))
        )
        assert isinstance(result.end, SequenceFinished) and result.end.completion_tokens == 6
        assert result.text.strip()
        # Quality, teacher-forced over a known text, since int8 greedy text drifts from float32's
        # (how far depends on the CPU's int8 kernels, so no exact words are asserted): the int8
        # model's top token must be among float32's top 5 at most positions (measured: 71 %; a
        # broken quantization scores near 0).
        reference = AutoModelForCausalLM.from_pretrained(model_dir(model_state_dir), dtype=torch.float32).eval()
        text = (
            "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum and its "
            "cafes. Every year millions of tourists visit the city to enjoy its art, food and history."
        )
        ids = engine.tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            expected = reference(**ids).logits[0].topk(5, dim=-1).indices
            got = engine.model(**ids).logits[0].argmax(dim=-1)
        assert (got[:, None] == expected).any(dim=-1).float().mean().item() >= 0.6
    finally:
        engine.close()
