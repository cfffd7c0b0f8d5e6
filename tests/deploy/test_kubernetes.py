"""deploy/kubernetes: both overlays render, every object is valid against the Kubernetes schemas
(shipped offline by kubernetes-validate), and the manifests keep the cluster's rules: probes on
the ops ports, resource requests, GPUs for GPU workers, disruption budgets that select real pods,
settings that exist, and a scaler whose RBAC reaches exactly the worker Deployment's scale."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.kustomize_render import render
from tests.deploy.settings_env import known_env_vars, ops_ports

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/kubernetes"
OVERLAYS = ("cpu", "gpu")
#: Kubernetes release whose schemas the manifests are checked against.
K8S_VERSION = "1.32.0"
SERVICES = ("gateway", "batcher", "worker", "guardian", "scaler")


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _env(container: dict[str, Any], config: dict[str, str]) -> dict[str, Any]:
    env: dict[str, Any] = dict(config) if container.get("envFrom") else {}
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def test_every_object_is_valid_against_the_kubernetes_schema(rendered) -> None:
    _, objects = rendered
    assert len(objects) >= 20
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_schema_validation_catches_a_broken_object(rendered) -> None:
    _, objects = rendered
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_service_has_a_deployment_service_and_budget(rendered) -> None:
    _, objects = rendered
    deployments = _by_kind(objects, "Deployment")
    services = _by_kind(objects, "Service")
    budgets = _by_kind(objects, "PodDisruptionBudget")
    for name in SERVICES:
        assert f"lgc-{name}" in deployments and f"lgc-{name}" in services and f"lgc-{name}" in budgets, name
    assert all(o["metadata"].get("namespace") == "lgc" for o in objects if o["kind"] != "Namespace")
    assert deployments["lgc-gateway"]["spec"]["replicas"] >= 2 and deployments["lgc-batcher"]["spec"]["replicas"] >= 2


def test_budgets_and_services_select_pods_that_exist(rendered) -> None:
    _, objects = rendered
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in _by_kind(objects, "Deployment").values()]
    for deployment in _by_kind(objects, "Deployment").values():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for kind, path in (("PodDisruptionBudget", ("spec", "selector", "matchLabels")), ("Service", ("spec", "selector"))):
        for name, obj in _by_kind(objects, kind).items():
            selector = obj[path[0]][path[1]] if len(path) == 2 else obj[path[0]][path[1]][path[2]]
            assert any(selector.items() <= labels.items() for labels in pod_labels), f"{kind}/{name} selects nothing"


def test_probes_and_resources(rendered) -> None:
    _, objects = rendered
    for name, deployment in _by_kind(objects, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        service = name.removeprefix("lgc-")
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert ports[get["port"]] == ops_ports()[service], (name, probe)
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], name
        assert container["resources"]["limits"]["memory"], name
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ops_ports()[service])


def test_gpu_workers_request_gpus_and_cpu_workers_do_not(rendered) -> None:
    overlay, objects = rendered
    config = _by_kind(objects, "ConfigMap")["lgc-config"]["data"]
    (worker,) = _by_kind(objects, "Deployment")["lgc-worker"]["spec"]["template"]["spec"]["containers"]
    gpu_request = worker["resources"].get("limits", {}).get("nvidia.com/gpu")
    device = _env(worker, config)["LGC_WORKER_DEVICE"]
    if overlay == "gpu":
        assert gpu_request == "1" and worker["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert device == "cuda"
    else:
        assert gpu_request is None and device == "cpu"
    for name, deployment in _by_kind(objects, "Deployment").items():
        if name != "lgc-worker":
            for c in deployment["spec"]["template"]["spec"]["containers"]:
                assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), name


def test_settings_exist_and_api_keys_are_mounted_from_the_secret(rendered) -> None:
    _, objects = rendered
    known = known_env_vars()
    config = _by_kind(objects, "ConfigMap")["lgc-config"]["data"]
    assert set(config) <= known, set(config) - known
    for deployment in _by_kind(objects, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            unknown = {e["name"] for e in container.get("env", [])} - known
            assert not unknown, unknown
    keys_file = Path(config["LGC_API_KEYS_FILE"])
    secret = _by_kind(objects, "Secret")["lgc-api-keys"]
    assert keys_file.name in secret["stringData"]
    tenants = yaml.safe_load(secret["stringData"][keys_file.name])
    from services.gateway.tenants import TenantSpec

    for spec in tenants.values():
        TenantSpec.model_validate(spec)  # the example is a file the gateway accepts
    gateway = _by_kind(objects, "Deployment")["lgc-gateway"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in gateway["volumes"]}
    mounts = gateway["containers"][0]["volumeMounts"]
    (mount,) = [m for m in mounts if m["mountPath"] == str(keys_file.parent)]
    assert volumes[mount["name"]]["secret"]["secretName"] == "lgc-api-keys"


def test_scaler_may_scale_exactly_the_worker_deployment(rendered) -> None:
    _, objects = rendered
    scaler = _by_kind(objects, "Deployment")["lgc-scaler"]["spec"]["template"]["spec"]
    env = _env(scaler["containers"][0], {})
    assert env["LGC_SCALER_ACTUATOR"] == "kubernetes"
    target = env["LGC_SCALER_K8S_DEPLOYMENT"]
    assert target in _by_kind(objects, "Deployment")
    account = scaler["serviceAccountName"]
    assert account in _by_kind(objects, "ServiceAccount")
    (binding,) = [b for b in _by_kind(objects, "RoleBinding").values() if b["subjects"][0]["name"] == account]
    assert binding["subjects"][0]["namespace"] == "lgc"
    role = _by_kind(objects, "Role")[binding["roleRef"]["name"]]
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["apps"] and rule["resources"] == ["deployments/scale"]
    assert rule["resourceNames"] == [target]
    assert {"get", "patch"} <= set(rule["verbs"]) <= {"get", "patch", "update"}
    # No other pod gets an API token.
    for name, deployment in _by_kind(objects, "Deployment").items():
        if name != "lgc-scaler":
            assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, name


def test_topics_job_creates_the_topics(rendered) -> None:
    _, objects = rendered
    job = _by_kind(objects, "Job")["lgc-topics-init"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["lgc", "topics", "create"]
    assert container["envFrom"][0]["configMapRef"]["name"] == "lgc-config"


def test_keda_example_scales_the_workers_on_batcher_lag() -> None:
    (obj,) = list(yaml.safe_load_all((K8S / "keda/scaledobject.yaml").read_text()))
    assert obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledObject"
    assert obj["spec"]["scaleTargetRef"]["name"] == "lgc-worker"
    from services.batcher.settings import BatcherSettings
    from shared.records import Priority

    group = BatcherSettings.model_fields["batcher_group_id"].default
    topics = {t["metadata"]["topic"] for t in obj["spec"]["triggers"] if t["type"] == "kafka"}
    assert topics == {f"lgc.requests.{p.value}" for p in Priority}
    assert all(t["metadata"]["consumerGroup"] == group for t in obj["spec"]["triggers"])
    assert "keda" in (K8S / "README.md").read_text().lower()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_matches_kubectl_kustomize(overlay: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], check=True, capture_output=True, text=True
    ).stdout
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out) if o}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in render(K8S / "overlays" / overlay)}
    assert theirs.keys() == ours.keys()
    for key in theirs:
        assert theirs[key] == ours[key], key
