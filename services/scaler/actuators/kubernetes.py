"""`kubernetes`: the scale subresource of the worker Deployment, with the pod's service account.

* current: ``GET  /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` -> ``spec.replicas``
* apply:   ``PATCH`` the same path, ``Content-Type: application/merge-patch+json``,
  body ``{"spec": {"replicas": n}}``

Authentication is the mounted service-account token (``Authorization: Bearer``, re-read at every
call because bound tokens rotate) and the cluster CA; the namespace defaults to the pod's own.
RBAC: the scaler's service account needs `get` and `patch` on `deployments/scale` in that namespace.
Kubernetes then removes pods with SIGTERM and their `terminationGracePeriodSeconds`, during which a
worker drains its in-flight requests.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from services.scaler.actuators.base import ActuationError

__all__ = ["KubernetesActuator"]


class KubernetesActuator:
    """Sets `spec.replicas` of one Deployment."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        deployment: str,
        namespace: str | None = None,
        api_url: str = "https://kubernetes.default.svc",
        service_account_dir: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount"),
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._sa_dir = service_account_dir
        if namespace is None:
            try:
                namespace = (service_account_dir / "namespace").read_text().strip()
            except OSError as exc:
                raise ActuationError(
                    f"no namespace given and none mounted at {service_account_dir / 'namespace'}: {exc}"
                ) from exc
        self.namespace = namespace
        self.deployment = deployment
        self.path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}/scale"
        if client is None:
            ca = service_account_dir / "ca.crt"
            verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca.exists() else True
            client = httpx.AsyncClient(base_url=api_url, verify=verify, timeout=httpx.Timeout(30.0))
        self._client = client

    async def close(self) -> None:
        await self._client.aclose()

    def _headers(self) -> dict[str, str]:
        try:
            token = (self._sa_dir / "token").read_text().strip()
        except OSError as exc:
            raise ActuationError(f"no service-account token at {self._sa_dir / 'token'}: {exc}") from exc
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def _call(self, method: str, *, body: bytes | None = None, content_type: str | None = None) -> Any:
        headers = self._headers()
        if content_type:
            headers["Content-Type"] = content_type
        try:
            response = await self._client.request(method, self.path, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise ActuationError(f"kubernetes API unreachable: {exc}") from exc
        if response.status_code >= 400:
            hint = " (RBAC: the service account needs get/patch on deployments/scale)" if response.status_code == 403 else ""
            raise ActuationError(f"kubernetes {method} {self.path}: {response.status_code}{hint} {response.text[:300]}")
        return response.json()

    async def current(self) -> int | None:
        scale = await self._call("GET")
        replicas = (scale.get("spec") or {}).get("replicas")
        return int(replicas) if replicas is not None else None

    async def apply(self, desired: int) -> None:
        body = b'{"spec":{"replicas":%d}}' % int(desired)
        await self._call("PATCH", body=body, content_type="application/merge-patch+json")
