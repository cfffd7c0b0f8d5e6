"""Schemathesis against the gateway's published OpenAPI document, on a real cluster.

The cluster is real in every part but the model: Tansu, Redis, gateway, batcher and a worker with
the labelled `simulated` backend (fast tokens, so generated valid requests are answered in
milliseconds, not minutes of SmolLM2). Schemathesis generates valid and invalid bodies, headers and
paths from the document; every answer must

- never be a 5xx (`not_a_server_error`),
- carry a status code, content type and headers the document declares, and match its schema,
- reject bodies the document calls invalid with a 4xx (`negative_data_rejection`).

Left out on purpose: `positive_data_acceptance` (every schema-valid body must be accepted). The
request models describe OpenAI's request shape, so every request an OpenAI client sends parses and
the gateway can answer the parts it does not implement (tools, audio, an empty prompt, an `n` above
its limit) with a 400 that names the parameter, as the API promises, instead of a generic schema
error. Also `ignored_auth`: the valid key is set in the schema's configured headers, which replace
the Authorization header schemathesis generates, so its "invalid auth accepted" cases really carry
the valid key; the last test checks missing and wrong keys directly.

API keys are configured, so generated requests also cover a missing and a wrong Authorization
header (the document declares the bearer scheme).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import ignored_auth, positive_data_acceptance

from shared.launcher.cluster import ClusterConfig, EmbeddedCluster
from shared.launcher.ports import free_port_settings

API_KEY = "sk-schemathesis-0123456789"
#: Small enough that every generated `max_tokens` above it is refused quickly with a 400, and every
#: accepted one is answered quickly by the simulated worker.
MAX_TOKENS_LIMIT = 16


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    state_dir = tmp_path_factory.mktemp("schemathesis")
    keys = state_dir / "api_keys.json"
    keys.write_text(json.dumps({API_KEY: {"name": "fuzz"}}))
    settings_ = free_port_settings(
        workers=1,
        state_dir=state_dir,
        worker_backend="simulated",
        kafka_session_timeout_ms=2_000,
        start_scaler=False,
        start_guardian=False,
    )
    service_env = {  # read by the services themselves, not by the launcher
        "LGC_SIMULATED_TOKENS_PER_S": "5000",
        "LGC_SIMULATED_TTFT_MS": "1",
        "LGC_GATEWAY_MAX_TOKENS_LIMIT": str(MAX_TOKENS_LIMIT),
        "LGC_GATEWAY_DEFAULT_MAX_TOKENS": "8",
        "LGC_API_KEYS_FILE": str(keys),
    }
    cluster = EmbeddedCluster(ClusterConfig(settings=settings_, extra_env=service_env))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def gateway_schema(fuzz_cluster: EmbeddedCluster) -> schemathesis.BaseSchema:
    base = fuzz_cluster.endpoints.http_url
    # The document itself must be reachable without a key: tools fetch it before they have one.
    assert httpx.get(f"{base}/openapi.json", timeout=10).status_code == 200
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    schema.config.update(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"})
    return schema


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_gateway_honours_its_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate(timeout=30, excluded_checks=[positive_data_acceptance, ignored_auth])


def test_a_missing_or_wrong_key_is_refused_before_the_body_is_read(fuzz_cluster: EmbeddedCluster) -> None:
    # What `ignored_auth` would check, done directly (see the module docstring).
    base = fuzz_cluster.endpoints.http_url
    body = {"messages": [{"role": "tool"}], "prompt": "", "n": 0}  # invalid in every way
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
        for headers in ({}, {"Authorization": "Bearer sk-wrong-key-000000"}, {"Authorization": API_KEY}):
            if path == "/v1/models":
                response = httpx.get(f"{base}{path}", headers=headers, timeout=10)
            else:
                response = httpx.post(f"{base}{path}", headers=headers, json=body, timeout=10)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.json()["error"]["type"] == "invalid_request_error" or response.json()["error"]["code"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "hi", "stream": True, "max_tokens": 4}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4}),
    ],
)
def test_a_streamed_answer_matches_the_document(gateway_schema: schemathesis.BaseSchema, path: str, body: dict) -> None:
    # Generated cases reach `"stream": true` only now and then; this one always does, so every
    # event of the stream is checked against the document's event schema every run.
    case = gateway_schema[path]["POST"].Case(
        body=body, media_type="application/json", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    response = case.call_and_validate(timeout=30, excluded_checks=[positive_data_acceptance, ignored_auth])
    assert response.headers["content-type"][0].startswith("text/event-stream"), (response.status_code, response.text[:300])
    assert "[DONE]" in response.text
