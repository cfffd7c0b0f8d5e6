"""Backend selection."""

from __future__ import annotations

import importlib.util

import pytest

from services.worker.engine_factory import BackendUnavailableError, build_engine
from services.worker.settings import WorkerSettings
from services.worker.simulated_engine import SimulatedEngine
from services.worker.transformers_engine import TransformersEngine
from services.worker.vllm_engine import VllmEngine


def test_simulated_and_transformers() -> None:
    assert isinstance(build_engine(WorkerSettings(worker_backend="simulated")), SimulatedEngine)
    assert isinstance(build_engine(WorkerSettings(worker_backend="transformers")), TransformersEngine)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_says_what_to_do() -> None:
    with pytest.raises(BackendUnavailableError, match="LGC_WORKER_BACKEND=vllm needs vLLM.*transformers or simulated"):
        build_engine(WorkerSettings(worker_backend="vllm"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here")
def test_vllm_when_installed() -> None:
    assert isinstance(build_engine(WorkerSettings(worker_backend="vllm")), VllmEngine)
    with pytest.raises(BackendUnavailableError, match="LGC_WORKER_QUANTIZATION=int8 is for the transformers backend"):
        build_engine(WorkerSettings(worker_backend="vllm", worker_quantization="int8"))
