"""Fixtures for the worker's tests: the real SmolLM2 model, converted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import model_cache_dir
from shared.model_store import prepare_model, resolve_model


@pytest.fixture(scope="session")
def model_state_dir() -> Path:
    """A state dir holding SmolLM2 converted to safetensors: the same one the integration suite
    uses, so the ~30 s conversion runs once per machine, not once per suite."""
    state_dir = model_cache_dir()
    prepare_model(resolve_model("smollm2"), state_dir)
    return state_dir
