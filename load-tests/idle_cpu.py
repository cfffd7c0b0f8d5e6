"""Idle CPU of an embedded cluster: how much of one core a cluster that serves nothing uses.

Starts an `EmbeddedCluster` (gateway, batcher, N workers, guardian, scaler, the embedded Tansu
broker and redis-server, as `lgc up` does), waits until every service is ready, lets it settle,
then reads every process's CPU time (utime + stime from `/proc/<pid>/stat`, children and threads
included) at the start and the end of a window. Prints one JSON object: per process the share of
one core it used, the total, the targets (whole cluster under 3 % of one core, each worker under
1 %), pass/fail, context switches per second (wake-ups) and the load average before and after.

After the window it sends one chat completion (1 token) and reports its latency as
`first_request_after_idle_ms`: what the first request after a long silence pays for an idle
cluster's long fetch waits (see shared/kafka_clients.py, `LGC_KAFKA_DEEP_IDLE_FETCH_MAX_WAIT_MS`).
`--no-first-request` skips it.

The launcher process itself (this script: it copies the services' output, and with the scaler's
`local` actuator runs the worker reconciler) is counted as `launcher`, as in `lgc up`.

Not a test: the numbers depend on the machine and on what else runs on it (see the load average).

Usage:

    .venv/bin/python load-tests/idle_cpu.py                          # simulated worker, 60 s window
    .venv/bin/python load-tests/idle_cpu.py --backend transformers   # the real SmolLM2 worker
    .venv/bin/python load-tests/idle_cpu.py --window 30 --threads 5  # + the 5 busiest threads of each
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from process_cpu import TICKS_PER_S, stat_ticks  # noqa: E402
from process_cpu import descendants as descendants_of  # noqa: E402
from shared.launcher.cluster import ClusterConfig, EmbeddedCluster  # noqa: E402
from shared.launcher.output import FileSink  # noqa: E402
from shared.launcher.ports import free_port_settings  # noqa: E402
from shared.settings import default_state_dir  # noqa: E402



@dataclass
class TaskSample:
    """CPU ticks and context switches of one thread."""

    name: str
    ticks: int
    switches: int


def _switches(path: Path) -> int:
    total = 0
    for line in path.read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


def _sample_process(pid: int, *, descendants: bool) -> dict[str, TaskSample]:
    """Per-thread samples of `pid` (and its descendants), keyed `pid/tid`."""
    out: dict[str, TaskSample] = {}
    for proc in [pid, *(descendants_of(pid) if descendants else [])]:
        for task in Path(f"/proc/{proc}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                out[f"{proc}/{task.name}"] = TaskSample(name, stat_ticks(task / "stat"), _switches(task / "status"))
            except (OSError, ValueError):
                continue  # Safe: a thread that ended during the read used no more CPU.
    return out


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _percent(ticks: int, seconds: float) -> float:
    return round(100.0 * ticks / TICKS_PER_S / seconds, 2)


def measure(pids: dict[str, int], window_s: float, top_threads: int) -> dict:
    """Share of one core per process over `window_s` seconds."""
    def sample() -> dict[str, dict[str, TaskSample]]:
        # The launcher's descendants are the services themselves, counted on their own.
        return {name: _sample_process(pid, descendants=name != "launcher") for name, pid in pids.items()}

    before = sample()
    t0 = time.monotonic()
    time.sleep(window_s)
    after = sample()
    elapsed = time.monotonic() - t0
    processes: dict[str, dict] = {}
    for name in pids:
        threads = []
        for key, end in after[name].items():
            start = before[name].get(key)
            ticks = end.ticks - (start.ticks if start else 0)
            switches = end.switches - (start.switches if start else 0)
            threads.append((key, end.name, ticks, switches))
        ticks = sum(t[2] for t in threads)
        entry: dict = {
            "pid": pids[name],
            "cpu_percent": _percent(ticks, elapsed),
            "switches_per_s": round(sum(t[3] for t in threads) / elapsed, 1),
        }
        if top_threads:
            threads.sort(key=lambda t: (t[2], t[3]), reverse=True)
            entry["threads"] = [
                {"tid": key, "name": tname, "cpu_percent": _percent(tt, elapsed), "switches_per_s": round(sw / elapsed, 1)}
                for key, tname, tt, sw in threads[:top_threads]
            ]
        processes[name] = entry
    return {"window_s": round(elapsed, 1), "processes": processes}


def first_request_ms(http_url: str) -> float | None:
    """Latency of one 1-token chat completion (caches bypassed); None if it failed."""
    with httpx.Client(base_url=http_url, timeout=60) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        started = time.perf_counter()
        response = client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            headers={"Cache-Control": "no-cache"},
        )
        elapsed = time.perf_counter() - started
    return round(elapsed * 1000, 1) if response.status_code == 200 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("simulated", "transformers"), default="simulated")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds between ready and the window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of measurement")
    parser.add_argument("--threads", type=int, default=0, help="also list the N busiest threads of each process")
    parser.add_argument("--target-total", type=float, default=3.0, help="%% of one core, whole cluster")
    parser.add_argument("--target-worker", type=float, default=1.0, help="%% of one core, each worker")
    parser.add_argument("--log", type=Path, default=None, help="cluster log file (default: a temp file)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--no-first-request", action="store_true", help="skip the request sent after the window"
    )
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="lgc-idle-"))
    if args.backend == "transformers":
        # Reuse the converted model (the conversion takes ~30 s); everything else stays private.
        models = default_state_dir() / "models"
        models.mkdir(parents=True, exist_ok=True)
        (state / "models").symlink_to(models, target_is_directory=True)
    log = args.log or state / "cluster.log"
    settings = free_port_settings(
        workers=args.workers,
        worker_backend=args.backend,
        state_dir=state,
        log_format="text",
        log_level="WARNING",
    )
    sink = FileSink(log)
    load_start = _loadavg()
    with EmbeddedCluster(ClusterConfig(settings=settings, log_sink=sink)) as cluster:
        ready_at = time.monotonic()
        time.sleep(args.settle)
        pids = {"launcher": os.getpid(), **cluster.pids}
        result = measure(pids, args.window, args.threads)
        idle_s = time.monotonic() - ready_at
        first_ms = None if args.no_first_request else first_request_ms(cluster.http_url)
        failed = [s.name for s in cluster.failed]
    sink.close()
    procs = result["processes"]
    total = round(sum(p["cpu_percent"] for p in procs.values()), 2)
    workers = {n: p["cpu_percent"] for n, p in procs.items() if n.startswith("worker")}
    out = {
        "backend": args.backend,
        "workers": args.workers,
        "settle_s": args.settle,
        **result,
        "total_cpu_percent": total,
        "total_switches_per_s": round(sum(p["switches_per_s"] for p in procs.values()), 1),
        "target_total_percent": args.target_total,
        "target_worker_percent": args.target_worker,
        "pass_total": total < args.target_total,
        "pass_workers": all(v < args.target_worker for v in workers.values()),
        "pass": total < args.target_total and all(v < args.target_worker for v in workers.values()) and not failed,
        "services_failed": failed,
        "first_request_after_idle_ms": first_ms,
        "idle_before_first_request_s": math.floor(idle_s),
        "loadavg_before": load_start,
        "loadavg_after": _loadavg(),
        "cpus": os.cpu_count(),
        "log": str(log),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
