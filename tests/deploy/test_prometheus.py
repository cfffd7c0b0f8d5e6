"""deploy/prometheus: the scrape config reaches every service on its ops port, and every alert
rule uses metrics (and labels) the services really export. `promtool` checks run in
`make validate-deploy`; here they run too when promtool is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.metric_refs import problems_in
from tests.deploy.settings_env import ops_ports

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy/prometheus"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((PROM / "prometheus.yml").read_text())


def _rules() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend((f"{path.name}:{group['name']}", rule) for rule in group["rules"])
    return found


def test_every_service_is_scraped_on_its_ops_port(config) -> None:
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for service, port in ops_ports().items():
        job_name = f"lgc-{service}"
        job = jobs[job_name]
        targets = [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        targets += [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        assert f"{service}:{port}" in targets, job_name
        for target in targets:
            assert target.split(":")[0] in compose, f"{job_name} scrapes {target}, not a compose service"


def test_rule_files_are_loaded_from_the_mounted_folder(config) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["prometheus"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in compose["volumes"]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_alert_rules_are_complete() -> None:
    rules = _rules()
    assert len(rules) >= 8
    names = [rule["alert"] for _, rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for where, rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), where
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], where


def test_alert_expressions_use_exported_metrics_and_labels() -> None:
    problems = [p for where, rule in _rules() for p in problems_in(rule["expr"], f"{where}/{rule['alert']}")]
    assert not problems, "\n".join(problems)


def test_the_metric_check_catches_a_made_up_metric() -> None:
    assert problems_in("sum(rate(lgc_gateway_no_such_thing_total[5m]))", "x")
    assert problems_in('sum(rate(lgc_gateway_requests_total{colour="red"}[5m]))', "x")
    assert problems_in("sum by (colour) (rate(lgc_gateway_requests_total[5m]))", "x")
    assert not problems_in('sum by (priority) (rate(lgc_gateway_requests_total{outcome="ok"}[5m]))', "x")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make validate-deploy needs it)")
def test_promtool_accepts_config_and_rules() -> None:
    subprocess.run(["promtool", "check", "config", str(PROM / "prometheus.yml")], check=True, capture_output=True)
    rules = [str(p) for p in sorted((PROM / "rules").glob("*.yml"))]
    subprocess.run(["promtool", "check", "rules", *rules], check=True, capture_output=True)
