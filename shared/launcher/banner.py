"""What `lgc up` prints once the cluster is ready: every endpoint and a request to copy and paste."""

from __future__ import annotations

import json
import shlex

import httpx

from shared.launcher.cluster import EmbeddedCluster

__all__ = ["describe_cluster", "fallback_model_name", "served_model_name"]

#: Names the gateway reports for the model aliases `lgc up` knows (used if /v1/models cannot say).
_KNOWN_MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct"}


def fallback_model_name(model: str) -> str:
    """The model name to show when the gateway's /v1/models does not answer."""
    return _KNOWN_MODEL_NAMES.get(model.lower(), model.rstrip("/").rsplit("/", 1)[-1])


def served_model_name(http_url: str, fallback: str, timeout_s: float = 3.0) -> str:
    """The first model the gateway lists on GET /v1/models, else `fallback`."""
    try:
        response = httpx.get(f"{http_url}/v1/models", timeout=timeout_s)
        response.raise_for_status()
        data = response.json().get("data") or []
        return str(data[0]["id"]) if data else fallback
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        # Safe: the listing is a convenience for the printed example; the fallback is the model
        # the workers were told to serve.
        return fallback


def describe_cluster(cluster: EmbeddedCluster, model_name: str) -> str:
    """The endpoint listing and a curl example, as printed by `lgc up`."""
    s = cluster.settings
    e = cluster.endpoints
    kafka_note = "external" if s.kafka_is_external else "embedded Tansu"
    redis_note = "external" if s.redis_is_external else "embedded redis-server"
    rows = [
        ("HTTP (OpenAI-compatible)", f"{e.http_url}/v1"),
        ("gRPC", e.grpc_target),
        ("Kafka", f"{e.kafka_bootstrap} ({kafka_note})"),
        ("Redis", f"{e.redis_url} ({redis_note})"),
        ("Qdrant", e.qdrant),
    ]
    if e.guard_check_url:
        rows.append(("Guardian check", f"POST {e.guard_check_url}"))
    width = max(len(label) for label, _ in rows)
    lines = [
        "",
        f"LLM Guardian Cluster is up: {s.workers} worker(s), backend {s.worker_backend}, model {model_name}",
        *(f"  {label:<{width}}  {value}" for label, value in rows),
        "  Metrics:",
        *(f"    {name:<{width - 2}}  {url}" for name, url in cluster.metrics_urls.items()),
        "",
        "Try it:",
        "  " + _curl_example(e.http_url, model_name),
    ]
    if e.guard_check_url:
        body = json.dumps({"text": "mail me at jane@example.com", "kind": "response", "tenant": "default"})
        lines.append(f"  curl -s {e.guard_check_url} -H 'Content-Type: application/json' -d {shlex.quote(body)}")
    lines += ["", "Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


def _curl_example(http_url: str, model_name: str) -> str:
    body = json.dumps(
        {
            "model": model_name,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 32,
        }
    )
    return f"curl -s {http_url}/v1/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(body)}"
