"""load-tests/engine_closed_loop.py: the command runs a tiny closed loop on the real model and
prints a report whose seeded runs generated the same tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared.model_store import prepare_model, resolve_model
from tests.conftest import model_cache_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "load-tests" / "engine_closed_loop.py"


def test_a_tiny_closed_loop_reports_every_run_and_repeats_its_tokens() -> None:
    state_dir = model_cache_dir()
    prepare_model(resolve_model("smollm2"), state_dir)  # converted once per machine
    env = {**os.environ, "LGC_STATE_DIR": str(state_dir), "LGC_WORKER_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--streams", "2", "--requests", "3", "--max-tokens", "4", "--repeats", "2"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["setup"]["streams"] == 2 and report["setup"]["requests"] == 3
    assert len(report["runs"]) == 2 and report["median"] in report["runs"]
    assert report["same_tokens_every_run"] is True
    for run in report["runs"]:
        assert 3 <= run["output_tokens"] <= 3 * 4  # every request made a token, none more than asked
        assert run["output_tokens_per_s"] > 0 and run["decode_steps"] >= 1
        assert run["ttft_ms"]["p50"] <= run["ttft_ms"]["p99"]
