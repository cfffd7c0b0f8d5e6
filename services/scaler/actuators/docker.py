"""`docker`: scale the compose project's worker service through the Docker Engine API.

Compose has no API of its own (`docker compose up --scale` is client-side), so this does what it
does, over the engine's unix socket (mount `/var/run/docker.sock` into the scaler's container):

* **list** ``GET /containers/json?all=true&filters={"label": [project, service]}`` — the service's
  containers, by the labels compose puts on them;
* **scale up** — start stopped containers of the service first (oldest first); then copy a
  template container (``GET /containers/{id}/json``) into a new one,
  ``POST /containers/create?name=<project>-<service>-<n>`` with the template's image, command,
  environment, labels (container number `n`), host config (without host port bindings, which
  copies could not share) and networks (with the service name as alias), then
  ``POST /containers/{id}/start``. The copy's ``LGC_INSTANCE_ID`` and ``LGC_WORKER_ADVERTISE_HOST``
  are its container name, so it registers under its own name and address;
* **scale down** — newest first: ``POST /containers/{id}/stop?t=<timeout>`` (SIGTERM: the worker
  drains its in-flight requests, then the engine kills it after the timeout), then
  ``DELETE /containers/{id}``; at 0 the last containers are only stopped, not removed, so they
  remain templates for the next scale up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from services.scaler.actuators.base import ActuationError

__all__ = ["DockerActuator"]

_PROJECT = "com.docker.compose.project"
_SERVICE = "com.docker.compose.service"
_NUMBER = "com.docker.compose.container-number"


class DockerActuator:
    """Scales one compose service by creating, starting, stopping and removing its containers."""

    name = "docker"

    def __init__(
        self,
        *,
        project: str,
        service: str,
        stop_timeout_s: int = 60,
        socket: Path | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.project = project
        self.service = service
        self.stop_timeout_s = stop_timeout_s
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(socket or Path("/var/run/docker.sock")))
            # The host name is ignored over a unix socket; the engine wants some Host header.
            client = httpx.AsyncClient(transport=transport, base_url="http://docker", timeout=httpx.Timeout(30.0))
        self._client = client

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        try:
            response = await self._client.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise ActuationError(f"docker engine unreachable: {exc}") from exc
        if response.status_code == 304:  # already started / already stopped
            return None
        if response.status_code >= 400:
            raise ActuationError(f"docker {method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    async def containers(self) -> list[dict[str, Any]]:
        """The service's containers, oldest first."""
        filters = {"label": [f"{_PROJECT}={self.project}", f"{_SERVICE}={self.service}"]}
        listed = await self._call("GET", "/containers/json", params={"all": "true", "filters": json.dumps(filters)})
        return sorted(listed or [], key=lambda c: (c.get("Created", 0), c.get("Id", "")))

    async def current(self) -> int | None:
        return sum(1 for c in await self.containers() if c.get("State") == "running")

    async def apply(self, desired: int) -> None:
        containers = await self.containers()
        running = [c for c in containers if c.get("State") == "running"]
        stopped = [c for c in containers if c.get("State") != "running"]
        if desired > len(running):
            missing = desired - len(running)
            for container in stopped[:missing]:
                await self._call("POST", f"/containers/{container['Id']}/start")
                missing -= 1
            if missing:
                if not containers:
                    raise ActuationError(
                        f"no container of compose service {self.project}/{self.service} to copy: "
                        f"start it once with `docker compose up {self.service}`"
                    )
                template = await self._call("GET", f"/containers/{(running or containers)[-1]['Id']}/json")
                numbers = [int(c.get("Labels", {}).get(_NUMBER, "0") or 0) for c in containers]
                for offset in range(1, missing + 1):
                    await self._create_from(template, max(numbers, default=0) + offset)
        elif desired < len(running):
            for container in reversed(running[desired:]):
                await self._call("POST", f"/containers/{container['Id']}/stop", params={"t": str(self.stop_timeout_s)})
                if desired > 0:
                    await self._call("DELETE", f"/containers/{container['Id']}")

    async def _create_from(self, template: dict[str, Any], number: int) -> None:
        name = f"{self.project}-{self.service}-{number}"
        config = template.get("Config", {})
        env = [
            e for e in config.get("Env") or [] if not e.startswith(("LGC_INSTANCE_ID=", "LGC_WORKER_ADVERTISE_HOST="))
        ]
        env += [f"LGC_INSTANCE_ID={name}", f"LGC_WORKER_ADVERTISE_HOST={name}"]
        host_config = {**(template.get("HostConfig") or {}), "PortBindings": {}}
        networks = (template.get("NetworkSettings") or {}).get("Networks") or {}
        body = {
            "Image": config.get("Image"),
            "Cmd": config.get("Cmd"),
            "Entrypoint": config.get("Entrypoint"),
            "WorkingDir": config.get("WorkingDir", ""),
            "User": config.get("User", ""),
            "Env": env,
            "Labels": {**(config.get("Labels") or {}), _NUMBER: str(number)},
            "HostConfig": host_config,
            "NetworkingConfig": {"EndpointsConfig": {net: {"Aliases": [self.service]} for net in networks}},
        }
        created = await self._call("POST", "/containers/create", params={"name": name}, body=body)
        await self._call("POST", f"/containers/{created['Id']}/start")
