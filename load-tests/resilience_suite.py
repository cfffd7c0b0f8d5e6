"""Issue 7's whole proof in one command: faults under load, bad input, security, idle and overload.

Runs four parts, each in its own process(es), and writes ONE JSON report (default
`load-tests/results/resilience-report.json`); exit status 1 when any part fails.

1. **faults** — `fault_suite.py` (kill -9 of a worker mid-stream and of a batcher, Redis restart,
   broker outage, hung worker, each under load on a fresh embedded cluster): sent / ended ok /
   explicit error / lost / hung per scenario.
2. **bad_input_and_security** — the pytest modules that attack the cluster (schemathesis on the
   OpenAPI document, hypothesis on every record type, malformed and oversized Kafka records on every
   topic, malformed gRPC messages, body / prompt / max_tokens limits, API keys on HTTP and gRPC and
   never in logs, tenant isolation in caches and replies, rate and concurrency limits across two
   gateways, blocking guard mode through the gateway and straight over Kafka), with their results
   per test, grouped by the claim they check. They are also part of `make test`.
3. **idle** — `idle_cpu.py`: CPU of an idle embedded cluster (target < 3 % of one core in total,
   < 1 % per worker).
4. **overload** — `pipeline_bench.py`'s throughput phase with zero-compute simulated workers at
   concurrency from the core count to far beyond it: requests/s and CPU per request at each level.
   Passes when no request failed, the cluster's CPU per request (every service, Tansu and Redis;
   not the client) at the highest level is at most `--cpu-growth` (2x) the lowest level's — waiting
   requests cost nothing, nothing spins (the lesson of seed 001) — and throughput at the highest
   level is at least `--no-collapse-ratio` (1/3) of the best level's. That bound is loose on
   purpose: the load client runs on the same cores, and its own CPU per request grows about 4x from
   16 to 1,024 open connections (reported as `cpu_ms_per_request_client`), so total throughput
   falls with concurrency even when the cluster's cost per request stays flat.

    .venv/bin/python load-tests/resilience_suite.py                 # all parts, ~15 minutes
    .venv/bin/python load-tests/resilience_suite.py --parts idle overload
    make resilience                                                 # the same, report in RESILIENCE_OUT

Not part of `make test` as a whole (it takes minutes and measures the machine); part 2's tests are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PARTS = ("faults", "bad_input_and_security", "idle", "overload")

#: The claims of issue 7 items 2 and 3, and the test modules that check them.
CLAIM_TESTS: dict[str, list[str]] = {
    "HTTP API fuzzed from its OpenAPI document (schemathesis): no 5xx, documented answers": [
        "tests/integration/test_openapi_schemathesis.py",
    ],
    "record parsing: any bytes or JSON parse and round-trip or raise ValidationError (hypothesis)": [
        "tests/shared/test_records_properties.py",
    ],
    "malformed and oversized Kafka records on every topic: dead-lettered, services keep serving": [
        "tests/integration/test_malformed_records.py",
        "tests/integration/test_kafka_direct.py::test_unparseable_request_record_is_dead_lettered",
    ],
    "malformed gRPC messages: a clear status, no crash": [
        "tests/integration/test_malformed_grpc.py",
    ],
    "limits: body size (413), prompt length, max_tokens, bad JSON -> 4xx; cluster still serves": [
        "tests/integration/test_bad_input.py",
        "tests/services/gateway/test_body_limit.py",
    ],
    "authentication on HTTP and gRPC alike; keys never in logs": [
        "tests/services/gateway/test_tenants.py",
    ],
    "rate, token and concurrency limits per tenant, shared by two gateways": [
        "tests/services/gateway/test_rate_limits.py",
    ],
    "tenant isolation in caches and replies": [
        "tests/services/gateway/test_response_cache.py::test_tenant_isolation",
        "tests/services/gateway/test_exact_cache.py",
        "tests/services/gateway/test_semantic_cache.py",
        "tests/services/gateway/test_reply_router.py",
        "tests/integration/test_gateway_cache.py",
    ],
    "blocking guard mode: not bypassed through the gateway nor by producing to a request topic": [
        "tests/services/gateway/test_blocking_guard.py",
        "tests/services/batcher/test_answer_guard.py",
        "tests/integration/test_kafka_direct.py::test_a_blocking_tenant_cannot_bypass_the_guardian_over_kafka",
    ],
}


def _run(argv: list[str], *, timeout_s: float, log: Path) -> tuple[int, float]:
    """Run a part's command with its output in `log`; (exit status, seconds). 124 on timeout."""
    started = time.monotonic()
    with log.open("w") as sink:
        try:
            rc = subprocess.run(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, round(time.monotonic() - started, 1)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        # Safe: a part that wrote no (valid) report fails below, with its log named.
        return None


def part_faults(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "fault-report.json"
    rc, seconds = _run(
        [sys.executable, str(HERE / "fault_suite.py"), "--backend", args.backend, "--out", str(out)],
        timeout_s=args.part_timeout_s, log=work / "faults.log",
    )
    report = _read_json(out) or {}
    scenarios = [
        {k: s.get(k) for k in ("scenario", "fault", "passed", "sent", "ended_ok", "ended_error", "lost", "hung", "serves_again")}
        for s in report.get("scenarios", [])
    ]
    passed = rc == 0 and bool(scenarios) and all(s["passed"] for s in scenarios)
    return {"passed": passed, "exit_status": rc, "seconds": seconds, "scenarios": scenarios, "full_report": str(out)}


def part_bad_input_and_security(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    junit = work / "bad-input-security.xml"
    targets = sorted({t for tests in CLAIM_TESTS.values() for t in tests if (ROOT / t.split("::")[0]).exists()})
    missing = sorted({t for tests in CLAIM_TESTS.values() for t in tests if not (ROOT / t.split("::")[0]).exists()})
    rc, seconds = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *targets],
        timeout_s=args.part_timeout_s, log=work / "bad-input-security.log",
    )
    outcomes = _junit_outcomes(junit)
    claims = []
    for claim, tests in CLAIM_TESTS.items():
        mine = {name: outcome for name, outcome in outcomes.items() if any(_covers(t, name) for t in tests)}
        claims.append({
            "claim": claim,
            "tests": len(mine),
            "passed": sum(o == "passed" for o in mine.values()),
            "not_passed": sorted(name for name, o in mine.items() if o != "passed"),
            "ok": bool(mine) and all(o == "passed" for o in mine.values()),
        })
    passed = rc == 0 and not missing and all(c["ok"] for c in claims)
    return {
        "passed": passed, "exit_status": rc, "seconds": seconds, "claims": claims,
        "missing_test_files": missing, "totals": _totals(outcomes),
    }


def _covers(target: str, test_name: str) -> bool:
    """Whether a pytest target (file, or file::test) covers a junit test name (file::test[param])."""
    if "::" in target:
        return test_name == target or test_name.startswith(target + "[")
    return test_name.startswith(target + "::")


def _junit_outcomes(junit: Path) -> dict[str, str]:
    """`file::test` -> passed / failed / error / skipped, from pytest's junit XML."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        # Safe: no XML means pytest did not run; the part fails on its exit status.
        return {}
    outcomes: dict[str, str] = {}
    for case in root.iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = f"{module}.py::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        outcomes[name] = outcome
    return outcomes


def _totals(outcomes: dict[str, str]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for outcome in outcomes.values():
        totals[outcome] = totals.get(outcome, 0) + 1
    return totals


def part_idle(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "idle-cpu.json"
    rc, seconds = _run(
        [sys.executable, str(HERE / "idle_cpu.py"), "--backend", args.backend, "--window", str(args.idle_window_s), "--out", str(out)],
        timeout_s=args.part_timeout_s, log=work / "idle.log",
    )
    report = _read_json(out)
    passed = rc == 0 and isinstance(report, dict) and bool(report.get("passed"))
    return {"passed": passed, "exit_status": rc, "seconds": seconds, "report": report}


def part_overload(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    levels_arg = ",".join(str(c) for c in args.overload_concurrency)
    rc, seconds = _run_capture_json(
        [sys.executable, str(HERE / "pipeline_bench.py"), "--phases", "throughput", "--concurrency", levels_arg,
         "--seconds", str(args.overload_seconds), "--log-dir", str(work)],
        work / "overload.json", work / "overload.log", args.part_timeout_s,
    )
    report = _read_json(work / "overload.json") or {}
    levels = (report.get("throughput") or {}).get("levels", [])
    summary = [
        {
            "concurrency": lv["concurrency"],
            "requests_per_s": lv["requests_per_s"],
            "errors": lv["errors"],
            "latency_ms_p50": lv["latency_ms"]["p50"],
            "cpu_ms_per_request_cluster": round(
                sum(v for k, v in lv.get("cpu_s_per_request", {}).items() if k != "client"), 2
            ),
            "cpu_ms_per_request_client": lv.get("cpu_s_per_request", {}).get("client"),
        }
        for lv in levels
    ]
    checks: dict[str, Any] = {}
    if summary:
        best = max(lv["requests_per_s"] for lv in summary)
        by_concurrency = sorted(summary, key=lambda lv: lv["concurrency"])
        last, first = by_concurrency[-1], by_concurrency[0]
        checks = {
            "no_errors": all(not lv["errors"] for lv in summary),
            "highest_level_vs_best_throughput": round(last["requests_per_s"] / best, 3) if best else None,
            "no_collapse": bool(best) and last["requests_per_s"] >= args.no_collapse_ratio * best,
            "cluster_cpu_per_request_growth": round(
                last["cpu_ms_per_request_cluster"] / first["cpu_ms_per_request_cluster"], 2
            ) if first["cpu_ms_per_request_cluster"] else None,
        }
        growth = checks["cluster_cpu_per_request_growth"]
        checks["no_spinning"] = growth is not None and growth <= args.cpu_growth
    passed = rc == 0 and bool(checks) and checks["no_errors"] and checks["no_collapse"] and checks["no_spinning"]
    return {"passed": passed, "exit_status": rc, "seconds": seconds, "cpus": os.cpu_count(), "levels": summary, "checks": checks}


def _run_capture_json(argv: list[str], out: Path, log: Path, timeout_s: float) -> tuple[int, float]:
    """Like _run, but the command's stdout (its JSON) goes to `out`."""
    started = time.monotonic()
    with out.open("w") as stdout, log.open("w") as stderr:
        try:
            rc = subprocess.run(argv, cwd=ROOT, stdout=stdout, stderr=stderr, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, round(time.monotonic() - started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--backend", choices=("simulated", "transformers"), default="simulated",
                        help="worker backend of the fault and idle parts (overload always uses simulated workers)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "resilience-report.json")
    parser.add_argument("--work", type=Path, default=None, help="folder for the parts' logs and reports (default: a temp dir)")
    parser.add_argument("--part-timeout-s", type=float, default=1800)
    parser.add_argument("--idle-window-s", type=float, default=60)
    parser.add_argument("--overload-concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 512, 128, 16, 2],
                        help="levels, run in this order on one cluster (highest first: Tansu's memory storage costs more "
                        "per request as its logs grow, so later levels pay more; this order biases against the claim)")
    parser.add_argument("--overload-seconds", type=float, default=8)
    parser.add_argument("--no-collapse-ratio", type=float, default=1 / 3)
    parser.add_argument("--cpu-growth", type=float, default=2.0)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lgc-resilience-"))
    work.mkdir(parents=True, exist_ok=True)
    runners = {
        "faults": part_faults,
        "bad_input_and_security": part_bad_input_and_security,
        "idle": part_idle,
        "overload": part_overload,
    }
    report: dict[str, Any] = {
        "suite": "resilience (issue 7)",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
        "backend": args.backend,
        "work_dir": str(work),
        "parts": {},
    }
    for name in args.parts:
        print(f"[resilience] {name} ...", file=sys.stderr, flush=True)
        report["parts"][name] = runners[name](args, work)
        print(f"[resilience] {name}: {'passed' if report['parts'][name]['passed'] else 'FAILED'}", file=sys.stderr, flush=True)
    report["passed"] = all(part["passed"] for part in report["parts"].values())
    report["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
