"""The KV-cache budget's arithmetic, its refusal at start, and its bytes per token against a real
cache (SmolLM2, float32). How the engine admits newcomers within it is tested on the engine
(`test_transformers_engine.py`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from services.worker.engine_factory import BackendUnavailableError
from services.worker.kv_budget import CPU_SHARE, KVBudget, KVBudgetError, default_limit_bytes, kv_bytes_per_token
from shared.model_store import prepare_model, resolve_model


def test_a_batch_is_counted_as_its_rows_times_the_longest_final_length() -> None:
    budget = KVBudget(limit_bytes=1_000, bytes_per_token=10)
    assert budget.bytes_for([30, 50]) == 2 * 50 * 10
    assert budget.bytes_for([]) == 0
    assert budget.fits([50, 50]) and budget.fits([100])
    assert not budget.fits([50, 51]) and not budget.fits([34, 34, 34])


def test_a_budget_that_cannot_hold_one_longest_sequence_is_refused_at_start() -> None:
    budget = KVBudget(limit_bytes=1_000, bytes_per_token=10)
    budget.check_holds(100, "LGC_WORKER_KV_CACHE_GB")  # exactly fits
    with pytest.raises(KVBudgetError, match=r"cannot hold one sequence of 101 tokens.*LGC_WORKER_KV_CACHE_GB"):
        budget.check_holds(101, "LGC_WORKER_KV_CACHE_GB")
    # The worker's entry point reports it as a backend that cannot start (exit code 1).
    assert issubclass(KVBudgetError, BackendUnavailableError)


def test_the_cpu_default_is_a_share_of_physical_memory() -> None:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_limit_bytes(torch.device("cpu")) == int(physical * CPU_SHARE)


def test_bytes_per_token_match_a_real_cache(model_state_dir: Path) -> None:
    path = prepare_model(resolve_model("smollm2"), model_state_dir).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.arange(1, 13).reshape(2, 6)
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in out.past_key_values.layers)
    assert kv_bytes_per_token(model) == held // ids.numel() == 30 * 2 * 3 * 64 * 4  # SmolLM2-135M
