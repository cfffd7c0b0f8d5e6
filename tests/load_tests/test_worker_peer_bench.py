"""load-tests/worker_peer_bench.py (issue 8's benchmark): on a fresh install the one command runs
the whole cluster on the real model, sequential `generate` and `transformers serve`, skips
`vllm serve` with a note (vLLM is not in the default install), computes the issue's ratios from
what it measured, runs the concurrency sweep, and writes its JSON and PNG.

Tiny sizes (a few requests of 4 tokens): this checks that the benchmark works, not how fast
anything is; the numbers are the benchmark's to print (load-tests/README.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.model_store import prepare_model, resolve_model
from tests.conftest import model_cache_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "load-tests" / "worker_peer_bench.py"


def test_the_one_command_measures_every_installed_system_and_skips_vllm_with_a_note(tmp_path: Path) -> None:
    state_dir = model_cache_dir()
    prepare_model(resolve_model("smollm2"), state_dir)  # converted once per machine
    env = {**os.environ, "LGC_STATE_DIR": str(state_dir), "HF_HUB_OFFLINE": "1"}
    args = [
        "--out", str(tmp_path),
        "--systems", "cluster-transformers,sequential-generate,transformers-serve,vllm-serve",
        "--streams", "2", "--requests", "4", "--max-tokens", "4", "--sequential-requests", "2",
        "--repeats", "1", "--sweep", "1,4", "--tserve-dtypes", "float32", "--vllm-dtypes", "float32",
        "--save-requests",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "worker_peer_bench.json").read_text())
    assert json.loads(done.stdout) == report  # printed and written alike
    assert (tmp_path / "worker_peer_bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    systems = report["systems"]
    expected = {"cluster-transformers": 4, "sequential-generate": 2, "transformers-serve": 4}
    for name, requests in expected.items():
        run = systems[name]
        assert "skipped" not in run, (name, run.get("skipped"))
        assert run["simulated"] is False
        assert run["ok"] == requests and run["errors"] == {}, (name, run["errors"], run["first_error"])
        assert requests <= run["output_tokens"] <= requests * 4  # every request made a token, none more than asked
        assert run["output_tokens_per_s"] > 0
        assert run["ttft_ms"]["p50"] <= run["ttft_ms"]["p99"]
    for name in ("cluster-transformers", "transformers-serve"):
        # --save-requests: every request of the measured run, in the order sent; the closed loop
        # sends the third only once one of the first two has ended.
        timeline = systems[name]["request_timeline"]
        assert len(timeline) == 4 and all(t["ok"] and t["chunks"] >= 1 for t in timeline)
        assert [t["sent_s"] for t in timeline] == sorted(t["sent_s"] for t in timeline)
        assert all(0 < t["ttft_s"] <= t["e2e_s"] for t in timeline)
        assert timeline[2]["sent_s"] >= min(t["sent_s"] + t["e2e_s"] for t in timeline[:2]) - 1e-3
        assert len({t["id"] for t in timeline}) == 4 and all(t["id"] for t in timeline)
    assert all(t["id"].startswith("chatcmpl-") for t in systems["cluster-transformers"]["request_timeline"])
    assert "request_timeline" not in report["sweep"]["levels"]["4"]
    # The peer that is not installed: said so, with where to get it, and never given a number.
    assert "install_vllm_cpu.sh" in systems["vllm-serve"]["skipped"]
    assert "output_tokens_per_s" not in systems["vllm-serve"]

    comparison = report["comparison"]
    assert comparison["best_cluster_system"] == "cluster-transformers"
    assert comparison["best_cluster_vs_vllm_serve_tokens"] is None  # no vLLM, no ratio
    rate = {name: systems[name]["output_tokens_per_s"] for name in expected}
    assert comparison["transformers_backend_vs_sequential"] == round(
        rate["cluster-transformers"] / rate["sequential-generate"], 2
    )
    assert comparison["transformers_backend_vs_transformers_serve"] == round(
        rate["cluster-transformers"] / rate["transformers-serve"], 2
    )

    sweep = report["sweep"]
    assert sweep["system"] == "cluster-transformers"
    assert sorted(sweep["levels"], key=int) == ["1", "4"]
    for level in sweep["levels"].values():
        assert level["ok"] == 4 and level["output_tokens_per_s"] > 0


def _load_bench(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    # As when run as a script: its own folder first, for its sibling modules (process_cpu).
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("worker_peer_bench", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "worker_peer_bench", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_head_to_head_takes_a_peers_fastest_dtype_of_the_run_or_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load_bench(monkeypatch)
    systems = {
        "vllm-serve": {"dtype_runs": {"bfloat16": 38.2, "float32": 179.6}},
        "transformers-serve": {"dtype_runs": {"bfloat16": 90.0, "float32": None}},  # float32 failed
    }
    assert bench.best_dtype_of("vllm-serve:best", systems) == "vllm-serve:float32"
    assert bench.best_dtype_of("transformers-serve:best", systems) == "transformers-serve:bfloat16"
    # Not run in this invocation: the dtype the worker's auto takes on this CPU.
    assert bench.best_dtype_of("vllm-serve:best", {}) == f"vllm-serve:{bench.cpu_dtype()}"
    assert bench.best_dtype_of("vllm-serve:bfloat16", systems) == "vllm-serve:bfloat16"
    assert bench.best_dtype_of("cluster-transformers", systems) == "cluster-transformers"


def test_the_best_cluster_system_against_vllm_serve_is_an_unquantized_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # As measured on 2026-12-07: int8 made more tokens/s, but shorter, different answers.
    bench = _load_bench(monkeypatch)
    systems = {
        "cluster-transformers": {"output_tokens_per_s": 175.2, "ttft_ms": {"p50": 1424.3}},
        "cluster-transformers-int8": {"output_tokens_per_s": 196.5, "ttft_ms": {"p50": 752.9}},
        "cluster-simulated": {"output_tokens_per_s": 1306.8, "ttft_ms": {"p50": 146.5}},
        "vllm-serve": {"output_tokens_per_s": 179.6, "ttft_ms": {"p50": 2334.9}},
    }
    comparison = bench._comparison(systems)
    assert comparison["best_cluster_system"] == "cluster-transformers"
    assert comparison["best_cluster_vs_vllm_serve_tokens"] == 0.98
    assert comparison["best_cluster_ttft_p50_ms"] == 1424.3
    assert comparison["cluster-transformers-int8_vs_vllm_serve_tokens"] == 1.09


def test_the_report_names_the_cpu_and_its_instruction_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load_bench(monkeypatch)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        assert bench.cpu_description() == {}
        return
    first = cpuinfo.read_text().split("\n\n", 1)[0]
    flags = next(line for line in first.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    described = bench.cpu_description()
    assert described["model_name"] and described["model_name"] in first
    assert described["flags"] == [flag for flag in bench.CPU_FLAGS_REPORTED if flag in flags]
    assert set(described["flags"]) <= set(flags)
