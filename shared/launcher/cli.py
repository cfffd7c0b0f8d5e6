"""The `lgc` command.

    lgc up [--workers N] [--worker-backend transformers|vllm|simulated] [--worker-python PATH] [--model PATH_OR_ID]
           [--log-format text|json] [--log-level LEVEL] [--state-dir DIR] [--no-guardian] [--no-scaler]
    lgc topics create [--timeout S]
    lgc version

Every option also has an ``LGC_*`` environment variable (``LGC_WORKERS``, ``LGC_WORKER_BACKEND``,
``LGC_MODEL``, ``LGC_GATEWAY_HTTP_PORT``, ...); an option given on the command line wins.

Exit codes: 0 stopped on request (or topics created), 1 a service died while the cluster ran,
2 bad command line or settings, 3 the cluster (or the topic creation) could not start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from shared.launcher.banner import describe_cluster, fallback_model_name, served_model_name
from shared.launcher.cluster import ClusterConfig, EmbeddedCluster
from shared.launcher.embedded_infra import create_cluster_topics
from shared.launcher.foreground import EXIT_OK, EXIT_START_FAILED, EXIT_USAGE, run_until_stopped
from shared.launcher.settings import LauncherSettings

__all__ = ["build_parser", "main", "settings_from_args"]

_DISTRIBUTION = "llm-guardian-cluster"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lgc",
        description="LLM Guardian Cluster: a message-queue driven inference cluster for LLMs.",
        epilog="Exit codes: 0 ok/stopped on request, 1 a service died, 2 usage or settings, 3 start failed.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the embedded cluster in the foreground (Ctrl-C stops it)")
    up.add_argument("--workers", type=int, help="worker processes (LGC_WORKERS, default 1)")
    up.add_argument(
        "--worker-backend",
        choices=("transformers", "vllm", "simulated"),
        help="worker backend (LGC_WORKER_BACKEND, default transformers)",
    )
    up.add_argument(
        "--worker-python",
        help="Python that runs the workers, e.g. a separate environment with vLLM (LGC_WORKER_PYTHON, default this one)",
    )
    up.add_argument("--model", help="model name, local path or id (LGC_MODEL, default smollm2)")
    up.add_argument("--log-format", choices=("text", "json"), help="service log format (LGC_LOG_FORMAT, default text)")
    up.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="LGC_LOG_LEVEL (default INFO)")
    up.add_argument("--state-dir", help="converted models, Qdrant local store (LGC_STATE_DIR, default ~/.cache/lgc)")
    up.add_argument(
        "--no-guardian", dest="start_guardian", action="store_false", default=None, help="do not start the guardian"
    )
    up.add_argument(
        "--no-scaler", dest="start_scaler", action="store_false", default=None, help="do not start the scaler"
    )

    topics = commands.add_parser("topics", help="manage the cluster's Kafka topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = topic_commands.add_parser("create", help="create the cluster topics on LGC_KAFKA_BOOTSTRAP (idempotent)")
    create.add_argument(
        "--timeout", type=float, default=None, help="seconds to keep retrying while Kafka is down (default 60)"
    )

    commands.add_parser("version", help="print the version")
    return parser


def settings_from_args(args: argparse.Namespace) -> LauncherSettings:
    """LauncherSettings from the environment, with the options given on the command line on top.

    `lgc up` is for people at a terminal, so its log format is `text` unless LGC_LOG_FORMAT or
    --log-format say otherwise (the services' own default, `json`, suits machines).
    """
    overrides: dict[str, Any] = {
        field: value
        for field, value in (
            ("workers", args.workers),
            ("worker_backend", args.worker_backend),
            ("worker_python", args.worker_python),
            ("model", args.model),
            ("log_format", args.log_format),
            ("log_level", args.log_level),
            ("state_dir", args.state_dir),
            ("start_guardian", args.start_guardian),
            ("start_scaler", args.start_scaler),
        )
        if value is not None
    }
    settings = LauncherSettings(**overrides)
    if "log_format" not in settings.model_fields_set:
        settings = LauncherSettings(**overrides, log_format="text")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lgc` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return _up(settings_from_args(args))
        if args.command == "topics":
            return _topics_create(args.timeout)
        print(f"lgc {_version()}")
        return EXIT_OK
    except ValidationError as exc:
        print(f"lgc: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _up(settings: LauncherSettings) -> int:
    cluster = EmbeddedCluster(ClusterConfig(settings=settings))

    def _print_endpoints(running: EmbeddedCluster) -> None:
        name = served_model_name(running.http_url, fallback_model_name(settings.model))
        running.write(describe_cluster(running, name))

    return run_until_stopped(cluster, _print_endpoints)


def _topics_create(timeout_s: float | None) -> int:
    settings = LauncherSettings()
    cluster = EmbeddedCluster(ClusterConfig(settings=settings))
    try:
        created = create_cluster_topics(
            cluster.client_settings, timeout_s if timeout_s is not None else settings.topics_timeout_s
        )
    except RuntimeError as exc:
        print(f"lgc: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    names = f" ({', '.join(created)})" if created else ""
    print(f"topics ready on {cluster.kafka_bootstrap}: {len(created)} created{names}")
    return EXIT_OK


def _version() -> str:
    try:
        return metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        # Safe: running from a source tree that was never installed.
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
