"""load-tests/prefix_reuse_bench.py: the command runs on the real model at tiny sizes, through the
Llama steps and transformers' own forward, and reports both ways' timings and how far their logits
agree. (That the tokens are those of whole prompts is tested on the batch and the engine:
`tests/services/worker/test_decode_batch.py`, `test_transformers_engine.py`.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.model_store import prepare_model, resolve_model
from tests.conftest import model_cache_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "load-tests" / "prefix_reuse_bench.py"


@pytest.mark.parametrize("llama_decode", [True, False])
def test_a_tiny_run_reports_both_ways(llama_decode: bool) -> None:
    state_dir = model_cache_dir()
    prepare_model(resolve_model("smollm2"), state_dir)  # converted once per machine
    env = {
        **os.environ, "LGC_STATE_DIR": str(state_dir), "HF_HUB_OFFLINE": "1",
        "LGC_WORKER_LLAMA_DECODE": str(llama_decode).lower(), "LGC_WORKER_DTYPE": "float32",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--prompts", "3", "--repeats", "2"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    setup = report["setup"]
    assert setup["prompts"] == 3 and setup["llama_decode"] is llama_decode and setup["dtype"] == "float32"
    # SmolLM2's chat template puts a system turn of 20-odd tokens before every question.
    assert 20 <= setup["shared_prefix_tokens"] < setup["prompt_tokens"][0] <= setup["prompt_tokens"][1]
    for name in ("whole", "prefix_reused"):
        assert len(report["runs_ms"][name]) == 2 and all(ms > 0 for ms in report["runs_ms"][name])
        assert report["median_ms"][name] > 0
    assert report["ratio_whole_to_reused"] > 0
    assert report["max_logit_difference"] < 1e-3
