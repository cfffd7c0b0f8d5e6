"""deploy/grafana: provisioning points at the mounted dashboard folder and the Prometheus
datasource; the dashboard covers what operators need and uses only metrics the code exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.deploy.metric_refs import problems_in

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy/grafana"

#: What the dashboard must show (issue 9), each as a metric some panel has to query.
REQUIRED = {
    "request rate by priority and outcome": "lgc_gateway_requests_total",
    "TTFT percentiles": "lgc_gateway_ttft_seconds_bucket",
    "inter-token latency percentiles": "lgc_worker_inter_token_seconds_bucket",
    "queue lag per priority": "lgc_scaler_consumer_lag_records",
    "batch size": "lgc_batcher_batch_size_bucket",
    "tokens/s per worker": "lgc_worker_output_tokens_total",
    "cache hits by kind": "lgc_gateway_cache_hits_total",
    "guardian verdicts by category": "lgc_guardian_verdict_categories_total",
    "replicas current": "lgc_scaler_current_replicas",
    "replicas desired": "lgc_scaler_desired_replicas",
}


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def _targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [
        (panel["title"], target)
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel.get("targets", [])
    ]


def test_dashboard_structure(dashboards) -> None:
    assert "lgc-overview.json" in dashboards
    for name, dash in dashboards.items():
        assert dash["uid"] and dash["title"], name
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in dash["panels"]:
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
            if panel["type"] != "row":
                assert panel["targets"], panel["title"]


def test_dashboard_uses_the_provisioned_datasource(dashboards) -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    (prometheus,) = datasources
    assert prometheus["type"] == "prometheus" and prometheus["url"] == "http://prometheus:9090"
    for dash in dashboards.values():
        for panel in dash["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/lgc.yml").read_text())["providers"]
    grafana = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    (provider,) = providers
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_every_query_uses_exported_metrics_and_labels(dashboards) -> None:
    problems = [
        p for name, dash in dashboards.items() for title, t in _targets(dash) for p in problems_in(t["expr"], f"{name}/{title}")
    ]
    assert not problems, "\n".join(problems)


def test_dashboard_shows_what_operators_need(dashboards) -> None:
    exprs = " ".join(t["expr"] for _, t in _targets(dashboards["lgc-overview.json"]))
    missing = [what for what, metric in REQUIRED.items() if metric not in exprs]
    assert not missing, missing
    assert "sum by (priority, outcome)" in exprs
    assert "sum by (kind)" in exprs and "sum by (category)" in exprs
