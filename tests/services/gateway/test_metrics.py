"""The gateway's metrics and snapshot."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from services.gateway.metrics import GatewayMetrics


def test_metrics_are_named_and_snapshotted() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, instance="gw-1", max_inflight=10)
    metrics.observe_request("chat", "ok", "high", 0.2)
    metrics.observe_request("chat", "rate_limited", "normal", 0.001)
    metrics.set_inflight(3)
    metrics.ttft.labels(endpoint="chat", priority="high").observe(0.05)
    text = generate_latest(registry).decode()
    assert 'lgc_gateway_requests_total{endpoint="chat",outcome="ok",priority="high"} 1.0' in text
    assert "lgc_gateway_inflight_requests 3.0" in text
    assert "lgc_gateway_inflight_limit_requests 10.0" in text
    assert 'lgc_gateway_request_duration_seconds_count{endpoint="chat",priority="high"} 1.0' in text
    assert 'lgc_gateway_ttft_seconds_count{endpoint="chat",priority="high"} 1.0' in text
    snapshot = metrics.snapshot()
    assert snapshot.service == "gateway" and snapshot.instance == "gw-1"
    assert snapshot.values == {"inflight": 3.0, "max_inflight": 10.0, "requests_ok_total": 1.0, "requests_error_total": 1.0}
