"""DockerActuator against the exact Docker Engine API calls it makes.

No Docker engine can run on this machine (no daemon, no privileges), so the engine is an
httpx.MockTransport that records every request and answers like the engine does; each test asserts
the method, path, query and body of each call in order."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from services.scaler.actuators import ActuationError, DockerActuator

FILTERS = json.dumps({"label": ["com.docker.compose.project=lgc", "com.docker.compose.service=worker"]})


def _container(cid: str, created: int, state: str = "running", number: int = 1) -> dict[str, Any]:
    return {
        "Id": cid,
        "Created": created,
        "State": state,
        "Labels": {
            "com.docker.compose.project": "lgc",
            "com.docker.compose.service": "worker",
            "com.docker.compose.container-number": str(number),
        },
    }


TEMPLATE = {
    "Id": "c2",
    "Config": {
        "Image": "lgc-worker:latest",
        "Cmd": ["python", "-m", "services.worker"],
        "Entrypoint": None,
        "WorkingDir": "/app",
        "User": "lgc",
        "Env": ["LGC_KAFKA_BOOTSTRAP=kafka:9092", "LGC_WORKER_ADVERTISE_HOST=worker", "LGC_INSTANCE_ID=x"],
        "Labels": {"com.docker.compose.project": "lgc", "com.docker.compose.service": "worker",
                   "com.docker.compose.container-number": "2"},
    },
    "HostConfig": {"NetworkMode": "lgc_default", "PortBindings": {"50061/tcp": [{"HostPort": "50061"}]}},
    "NetworkSettings": {"Networks": {"lgc_default": {"IPAddress": "172.18.0.5"}}},
}


class Engine:
    """A recording stand-in for the engine's HTTP API."""

    def __init__(self, containers: list[dict[str, Any]]) -> None:
        self.containers = containers
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, dict(request.url.params), body))
        path = request.url.path
        if request.method == "GET" and path == "/containers/json":
            return httpx.Response(200, json=self.containers)
        if request.method == "GET" and path.endswith("/json"):
            return httpx.Response(200, json=TEMPLATE)
        if request.method == "POST" and path == "/containers/create":
            return httpx.Response(201, json={"Id": f"new-{request.url.params['name']}", "Warnings": []})
        if request.method in ("POST", "DELETE"):
            return httpx.Response(204)
        return httpx.Response(404, json={"message": "no such route"})


def _actuator(engine: Engine) -> DockerActuator:
    client = httpx.AsyncClient(transport=httpx.MockTransport(engine), base_url="http://docker")
    return DockerActuator(project="lgc", service="worker", stop_timeout_s=45, client=client)


async def test_current_counts_running_containers_found_by_compose_labels() -> None:
    engine = Engine([_container("c1", 10), _container("c2", 20, number=2), _container("c3", 5, "exited", 3)])
    assert await _actuator(engine).current() == 2
    assert engine.calls == [("GET", "/containers/json", {"all": "true", "filters": FILTERS}, None)]


async def test_scale_up_starts_stopped_containers_then_copies_the_newest_running_one() -> None:
    engine = Engine([_container("c1", 10), _container("c2", 20, number=2), _container("c3", 5, "exited", 3)])
    await _actuator(engine).apply(4)
    assert [(m, p) for m, p, _, _ in engine.calls] == [
        ("GET", "/containers/json"),
        ("POST", "/containers/c3/start"),
        ("GET", "/containers/c2/json"),
        ("POST", "/containers/create"),
        ("POST", "/containers/new-lgc-worker-4/start"),
    ]
    _, _, params, body = engine.calls[3]
    assert params == {"name": "lgc-worker-4"}
    assert body["Image"] == "lgc-worker:latest" and body["Cmd"] == ["python", "-m", "services.worker"]
    assert body["Env"] == [
        "LGC_KAFKA_BOOTSTRAP=kafka:9092", "LGC_INSTANCE_ID=lgc-worker-4", "LGC_WORKER_ADVERTISE_HOST=lgc-worker-4",
    ]
    assert body["Labels"]["com.docker.compose.container-number"] == "4"
    assert body["Labels"]["com.docker.compose.service"] == "worker"
    assert body["HostConfig"] == {"NetworkMode": "lgc_default", "PortBindings": {}}
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"lgc_default": {"Aliases": ["worker"]}}}


async def test_scale_down_stops_and_removes_the_newest_first() -> None:
    engine = Engine([_container("c1", 10), _container("c2", 20, number=2), _container("c3", 30, number=3)])
    await _actuator(engine).apply(1)
    assert [(m, p, q) for m, p, q, _ in engine.calls] == [
        ("GET", "/containers/json", {"all": "true", "filters": FILTERS}),
        ("POST", "/containers/c3/stop", {"t": "45"}),
        ("DELETE", "/containers/c3", {}),
        ("POST", "/containers/c2/stop", {"t": "45"}),
        ("DELETE", "/containers/c2", {}),
    ]


async def test_scale_to_zero_only_stops_so_a_template_remains() -> None:
    engine = Engine([_container("c1", 10)])
    await _actuator(engine).apply(0)
    assert [(m, p) for m, p, _, _ in engine.calls] == [("GET", "/containers/json"), ("POST", "/containers/c1/stop")]


async def test_already_at_the_desired_count_changes_nothing() -> None:
    engine = Engine([_container("c1", 10)])
    await _actuator(engine).apply(1)
    assert [(m, p) for m, p, _, _ in engine.calls] == [("GET", "/containers/json")]


async def test_no_container_to_copy_and_engine_errors_are_clear() -> None:
    with pytest.raises(ActuationError, match="docker compose up worker"):
        await _actuator(Engine([])).apply(1)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"message": "engine broke"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="http://docker")
    with pytest.raises(ActuationError, match="500"):
        await DockerActuator(project="lgc", service="worker", client=client).current()


async def test_an_unreachable_socket_is_an_actuation_error(tmp_path) -> None:
    actuator = DockerActuator(project="lgc", service="worker", socket=tmp_path / "no-docker.sock")
    try:
        with pytest.raises(ActuationError, match="unreachable"):
            await actuator.current()
    finally:
        await actuator.close()
