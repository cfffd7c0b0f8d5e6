"""One command for a smoke run of every load-test scenario: starts an embedded cluster with
simulated workers (no model: this measures the pipeline — gateway, Kafka, batcher, worker RPCs,
caches — not a model), runs a shortened version of each scenario in load-tests/scenarios over HTTP,
and the steady one also Kafka-direct, then writes `<scenario>.json` + `.png` per run and
`summary.json` to the output folder.

    make load-smoke                       # reports in load-tests/out
    .venv/bin/python load-tests/run_smoke.py --out /tmp/smoke --time-scale 0.2 --workers 2

The smoke versions keep each scenario's shape (phases, rates, mixes) but run every phase for
`--time-scale` of its duration. Numbers from a smoke run on a busy laptop are indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kafka_load import run_kafka  # noqa: E402 (sibling scripts, not a package)
from load_generator import Scenario, build_report, load_scenario, run_http, write_outputs  # noqa: E402

from shared.launcher.cluster import ClusterConfig, EmbeddedCluster  # noqa: E402
from shared.launcher.output import FileSink  # noqa: E402
from shared.launcher.ports import free_port_settings  # noqa: E402
from shared.settings import ClusterSettings  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
#: Run order: the baseline first, the overload last, so that no run starts behind another's backlog.
ORDER = ("steady", "cache_heavy", "burst", "priority_overload")
#: Pause between runs so the cluster is idle again (queues drained, snapshots refreshed).
SETTLE_S = 3.0


def _headline(report: dict) -> dict:
    overall = report["overall"]
    row = {
        "scenario": report["scenario"],
        "transport": report.get("transport"),
        "requests": overall["requests"],
        "ok": overall["ok"],
        "errors": overall["errors"],
        "req_per_s": overall["requests_per_s"],
        "tok_per_s": overall["output_tokens_per_s"],
        "ttft_p50_ms": overall["ttft_ms"]["p50"],
        "ttft_p95_ms": overall["ttft_ms"]["p95"],
        "itl_p50_ms": overall["itl_ms"]["p50"],
        "tpot_p50_ms": overall["tpot_ms"]["p50"],
        "e2e_p50_ms": overall["e2e_ms"]["p50"],
        "e2e_p95_ms": overall["e2e_ms"]["p95"],
    }
    by_priority = report.get("by_priority", {})
    if len(by_priority) > 1:
        row["ttft_p95_ms_by_priority"] = {p: s["ttft_ms"]["p95"] for p, s in by_priority.items()}
    row["cache"] = {c: s["requests"] for c, s in report.get("by_cache", {}).items()}
    return row


def _kafka_steady(
    steady: Scenario, cluster: EmbeddedCluster, prefix: str, model: str, out: Path, args: argparse.Namespace
) -> dict:
    """The steady scenario again, produced straight to Kafka (upstream-style)."""
    scenario = Scenario(**{**steady.__dict__, "name": "steady-kafka"})
    client = ClusterSettings(kafka_bootstrap=cluster.endpoints.kafka_bootstrap, topic_prefix=prefix)
    outcomes, elapsed, reply_topic = asyncio.run(run_kafka(scenario, client, model, progress=not args.no_progress))
    report = build_report(
        scenario, outcomes, elapsed, target=client.kafka_bootstrap, transport="kafka",
        reply_topic=reply_topic, smoke_time_scale=args.time_scale,
    )
    write_outputs(report, outcomes, out, charts=not args.no_charts)
    return _headline(report)


def run(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = {p.stem: p for p in SCENARIOS.glob("*.json")}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    scenarios = [load_scenario(found[n]).scaled(args.time_scale) for n in names]
    if args.only:
        scenarios = [s for s in scenarios if s.name in args.only]
    state = Path(tempfile.mkdtemp(prefix="lgc-load-smoke-"))
    settings = free_port_settings(
        workers=args.workers,
        worker_backend="simulated",
        state_dir=state,
        log_format="text",
        start_scaler=True,
        scaler_actuator="dry-run",
    )
    log = FileSink(out / "cluster.log")
    rows: list[dict] = []
    started = time.perf_counter()
    print(f"[smoke] starting an embedded cluster ({args.workers} simulated workers); log: {log.path}", file=sys.stderr)
    # Small simulated workers, so that the overload scenario really overloads them.
    extra_env = {"LGC_WORKER_MAX_BATCH_SIZE": str(args.worker_capacity)}
    with EmbeddedCluster(ClusterConfig(settings=settings, log_sink=log, extra_env=extra_env)) as cluster:
        url = cluster.endpoints.http_url
        print(f"[smoke] cluster ready in {time.perf_counter() - started:.1f} s at {url}", file=sys.stderr)
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        for scenario in scenarios:
            outcomes, elapsed = asyncio.run(run_http(scenario, url, model=model, progress=not args.no_progress))
            report = build_report(scenario, outcomes, elapsed, target=url, transport="http", smoke_time_scale=args.time_scale)
            write_outputs(report, outcomes, out, charts=not args.no_charts)
            rows.append(_headline(report))
            time.sleep(SETTLE_S)
            if scenario.name == "steady" and not args.skip_kafka:
                rows.append(_kafka_steady(scenario, cluster, settings.topic_prefix, model, out, args))
                time.sleep(SETTLE_S)
    log.close()
    summary = {
        "cluster": {
            "workers": args.workers,
            "worker_backend": "simulated",
            "worker_capacity": args.worker_capacity,
            "time_scale": args.time_scale,
        },
        "runs": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="load-tests/out")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-capacity", type=int, default=8, help="sequences per simulated worker")
    parser.add_argument("--time-scale", type=float, default=0.15, help="share of each phase's duration to run")
    parser.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    parser.add_argument("--skip-kafka", action="store_true", help="skip the Kafka-direct run")
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the cluster's context manager stops every service.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = run(args)
    print(json.dumps(rows, indent=2))
    failed = [r["scenario"] for r in rows if not r["ok"]]
    if failed:
        print(f"[smoke] no request succeeded in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
