"""The deployment files agree with the code: every compose service builds from a Dockerfile that
exists and runs a real entry point; every service package has the standard template."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", "batcher", "worker", "guardian", "scaler")


def test_compose_services_build_from_existing_dockerfiles() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "qdrant", "topics", *SERVICES} <= set(services)
    for name, spec in services.items():
        build = spec.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
    # Start-up order: every cluster service waits for the topics job.
    for name in SERVICES:
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_the_template(service: str) -> None:
    folder = REPO / "services" / service
    for name in ("__init__.py", "__main__.py", "settings.py", "README.md", "Dockerfile"):
        assert (folder / name).is_file(), f"services/{service}/{name} is missing"
    dockerfile = (folder / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile  # any other torch spec pulls several GB of CUDA wheels
    assert "USER " in dockerfile  # non-root
    assert f"services.{service}" in dockerfile
