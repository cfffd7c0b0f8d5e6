"""load-tests/chunked_prefill_bench.py: the command runs on the real model at tiny sizes and
reports every run. (That the running rows step between chunks, exactly, is tested on the engine:
`tests/services/worker/test_transformers_engine.py`.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared.model_store import prepare_model, resolve_model
from tests.conftest import model_cache_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "load-tests" / "chunked_prefill_bench.py"


def test_a_tiny_run_reports_each_chunk_size() -> None:
    state_dir = model_cache_dir()
    prepare_model(resolve_model("smollm2"), state_dir)  # converted once per machine
    env = {**os.environ, "LGC_STATE_DIR": str(state_dir), "HF_HUB_OFFLINE": "1"}
    args = ["--long-tokens", "64", "--rows", "2", "--running-tokens", "60", "--chunk-tokens", "32", "4096",
            "--repeats", "1", "--settle-s", "0.3"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    chunked, whole = report["runs"]
    assert chunked["chunk_tokens"] == 32 and whole["chunk_tokens"] == 4096
    assert chunked["long_prompt_tokens"] == whole["long_prompt_tokens"] == 64
    assert chunked["rows_running"] == whole["rows_running"] == 2
    # 64 tokens in chunks of 32: a decode step of the running rows between the two (and maybe
    # one that was under way when the long prompt arrived, or ended before its text was read).
    assert chunked["steps_during_prefill"] >= 1
    for run in report["runs"]:
        assert 0 < run["ttft_s"] and 0 < run["longest_step_gap_s"] and 0 < run["step_gap_before_p50_s"]
    assert report["median_by_chunk_tokens"]["32"] == chunked
