"""deploy/nginx/nginx.conf: least connections over the gateway replicas, streaming-safe proxying,
gRPC on its own listener, and addresses that match the compose services."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _blocks(text: str, header: str) -> list[tuple[str, str]]:
    """(argument, body) of every `header ARG { ... }` / `header { ... }` block (nesting-aware)."""
    found: list[tuple[str, str]] = []
    for m in re.finditer(rf"\b{header}\b([^{{;]*)\{{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found.append((m.group(1).strip(), text[m.end() : i - 1]))
    return found


@pytest.fixture(scope="module")
def conf() -> str:
    text = (REPO / "deploy/nginx/nginx.conf").read_text()
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_braces_balance(conf) -> None:
    assert conf.count("{") == conf.count("}")
    for line in conf.splitlines():
        s = line.strip()
        assert not s or s.endswith(("{", "}", ";")), f"directive without ';': {s!r}"


def test_upstreams_use_least_conn_over_the_gateway_service(conf) -> None:
    upstreams = dict(_blocks(conf, "upstream"))
    assert set(upstreams) == {"gateway_http", "gateway_grpc"}
    assert all("least_conn;" in body for body in upstreams.values())
    assert re.search(r"server\s+gateway:8000\b", upstreams["gateway_http"])
    assert re.search(r"server\s+gateway:50051\b", upstreams["gateway_grpc"])


def test_http_proxy_is_streaming_safe(conf) -> None:
    (body,) = [b for _, b in _blocks(conf, "location") if "proxy_pass" in b]
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";', "proxy_cache off;"):
        assert directive in body, directive
    read_timeout = int(re.search(r"proxy_read_timeout\s+(\d+)s;", body).group(1))
    # Longer than the gateway's own request timeout (LGC_GATEWAY_REQUEST_TIMEOUT_S, 300 s), so the
    # gateway, not the proxy, decides when a request has taken too long.
    from services.gateway.settings import GatewaySettings

    assert read_timeout > GatewaySettings.model_fields["gateway_request_timeout_s"].default


def test_grpc_has_its_own_http2_listener(conf) -> None:
    servers = _blocks(conf, "server")
    grpc = [b for _, b in servers if "grpc_pass" in b]
    assert len(grpc) == 1
    assert re.search(r"listen\s+50051\s+http2;", grpc[0])
    assert "grpc_pass grpc://gateway_grpc;" in grpc[0]
    assert int(re.search(r"grpc_read_timeout\s+(\d+)s;", grpc[0]).group(1)) >= 3600


def test_listeners_are_the_ports_compose_publishes(conf) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    published = {int(p.split(":")[1]) for p in compose["services"]["nginx"]["ports"]}
    listens = {int(m) for m in re.findall(r"listen\s+(\d+)", conf)}
    assert listens == published
    health = compose["services"]["nginx"]["healthcheck"]["test"]
    assert "http://127.0.0.1:8000/nginx-health" in health and "location = /nginx-health" in conf
