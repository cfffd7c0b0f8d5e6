"""KubernetesActuator against the exact API calls it makes.

No Kubernetes API server can run on this machine, so the API is an httpx.MockTransport that records
every request; the tests assert method, path, headers and body (the scale subresource of the worker
Deployment, a merge patch, the service-account token)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from services.scaler.actuators import ActuationError, KubernetesActuator

SCALE_PATH = "/apis/apps/v1/namespaces/inference/deployments/lgc-worker/scale"


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "namespace").write_text("inference\n")
    return tmp_path


def _actuator(sa_dir: Path, handler, **kwargs) -> KubernetesActuator:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://kubernetes.default.svc")
    return KubernetesActuator(deployment="lgc-worker", service_account_dir=sa_dir, client=client, **kwargs)


async def test_patch_and_get_the_scale_subresource_with_the_service_account_token(sa_dir: Path) -> None:
    calls: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"kind": "Scale", "spec": {"replicas": 3}, "status": {"replicas": 2}})

    actuator = _actuator(sa_dir, api)
    await actuator.apply(3)
    (sa_dir / "token").write_text("tok-2")  # bound tokens rotate: read at every call
    assert await actuator.current() == 3

    patch, get = calls
    assert (patch.method, patch.url.path) == ("PATCH", SCALE_PATH)
    assert patch.headers["content-type"] == "application/merge-patch+json"
    assert patch.headers["authorization"] == "Bearer tok-1"
    assert json.loads(patch.content) == {"spec": {"replicas": 3}}
    assert (get.method, get.url.path, get.content) == ("GET", SCALE_PATH, b"")
    assert get.headers["authorization"] == "Bearer tok-2"


async def test_namespace_setting_wins_over_the_mounted_one(sa_dir: Path) -> None:
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"spec": {"replicas": 1}})

    await _actuator(sa_dir, api, namespace="other").apply(1)
    assert seen == ["/apis/apps/v1/namespaces/other/deployments/lgc-worker/scale"]


async def test_forbidden_names_the_rbac_rule_and_missing_files_are_clear(sa_dir: Path) -> None:
    actuator = _actuator(sa_dir, lambda r: httpx.Response(403, json={"reason": "Forbidden"}))
    with pytest.raises(ActuationError, match="get/patch on deployments/scale"):
        await actuator.apply(2)
    (sa_dir / "token").unlink()
    with pytest.raises(ActuationError, match="no service-account token"):
        await actuator.current()
    with pytest.raises(ActuationError, match="no namespace given"):
        KubernetesActuator(deployment="lgc-worker", service_account_dir=sa_dir / "missing")
