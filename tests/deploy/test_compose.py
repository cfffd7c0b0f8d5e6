"""docker-compose.yml: valid against the Compose Specification's JSON Schema (vendored offline by
check-jsonschema), and right for this cluster: replicas, start-up order, health checks, GPU
reservation, the scaler's docker actuator, and only settings the services really read."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.settings_env import known_env_vars, ops_ports

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SERVICES = ("gateway", "batcher", "worker", "guardian", "scaler")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _compose_schema() -> dict[str, Any]:
    # check-jsonschema ships the Compose Specification schema (no network at test time).
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def test_compose_file_matches_the_compose_specification(compose) -> None:
    schema = _compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_check_catches_a_broken_file(compose) -> None:
    # The schema really constrains services: a misspelt key is an error, not silently accepted.
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["depends_onn"] = {}
    schema = _compose_schema()
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_every_part_of_the_cluster_is_there(compose) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "qdrant", "topics", "nginx", "prometheus", "grafana", "worker-gpu", *CLUSTER_SERVICES} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["topics"]["command"] == ["lgc", "topics", "create"]
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert services["batcher"]["deploy"]["replicas"] == 2


def test_replicated_services_publish_no_host_ports(compose) -> None:
    # Two replicas cannot bind one host port: the gateways are reached through NGINX only.
    for name in ("gateway", "batcher", "worker"):
        assert "ports" not in compose["services"][name], name
    assert set(compose["services"]["nginx"]["ports"]) == {"8000:8000", "50051:50051"}


def test_start_up_order_uses_health_conditions(compose) -> None:
    services = compose["services"]
    for name, spec in services.items():
        for dependency, condition in (spec.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            cond = condition["condition"]
            assert cond in ("service_healthy", "service_completed_successfully"), (name, dependency, cond)
            if cond == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no healthcheck"
    for name in CLUSTER_SERVICES:
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["nginx"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_long_running_services_have_healthchecks_on_their_ops_port(compose) -> None:
    ports = {**ops_ports(), "worker-gpu": ops_ports()["worker"]}
    for name, port in ports.items():
        test = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/ready" in test, name
    for name in ("kafka", "redis", "qdrant", "nginx", "prometheus", "grafana"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_gpu_worker_reserves_a_gpu_under_a_profile_and_cpu_worker_needs_none(compose) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["LGC_WORKER_DEVICE"] == "cuda"
    cpu = compose["services"]["worker"]
    assert "profiles" not in cpu and "deploy" not in cpu
    assert cpu["environment"]["LGC_WORKER_DEVICE"] == "cpu"


def test_scaler_uses_the_docker_actuator_on_the_worker_service(compose) -> None:
    scaler = compose["services"]["scaler"]
    env = scaler["environment"]
    assert env["LGC_SCALER_ACTUATOR"].startswith("${LGC_SCALER_ACTUATOR:-docker}")
    assert env["LGC_SCALER_DOCKER_PROJECT"] == compose["name"]
    service = re.fullmatch(r"\$\{LGC_SCALER_DOCKER_SERVICE:-(.+)\}", env["LGC_SCALER_DOCKER_SERVICE"]).group(1)
    assert service in compose["services"]
    (mount,) = scaler["volumes"]
    assert mount["source"] == mount["target"] == env["LGC_SCALER_DOCKER_SOCKET"] == "/var/run/docker.sock"


def test_every_lgc_variable_is_a_real_setting(compose) -> None:
    known = known_env_vars()
    for name, spec in compose["services"].items():
        for var in spec.get("environment") or {}:
            if var.startswith("LGC_"):
                assert var in known, f"{name}: {var} is read by no settings class"


def test_mounted_files_exist(compose) -> None:
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes") or []:
            if isinstance(volume, str) and volume.startswith("./"):
                assert (REPO / volume.split(":")[0]).exists(), f"{name}: {volume}"
        build = spec.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
