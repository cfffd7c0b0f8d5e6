"""Actuators: how a scaling decision is applied (`dry-run`, `local`, `docker`, `kubernetes`)."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.scaler.actuators.base import ActuationError, Actuator
from services.scaler.actuators.docker import DockerActuator
from services.scaler.actuators.dry_run import DryRunActuator
from services.scaler.actuators.kubernetes import KubernetesActuator
from services.scaler.actuators.local import LocalActuator
from services.scaler.settings import ScalerSettings

__all__ = [
    "ActuationError",
    "Actuator",
    "DockerActuator",
    "DryRunActuator",
    "KubernetesActuator",
    "LocalActuator",
    "make_actuator",
]


def make_actuator(settings: ScalerSettings) -> Actuator:
    """The actuator `LGC_SCALER_ACTUATOR` names, configured from the settings."""
    if settings.scaler_actuator == "local":
        return LocalActuator(aioredis.from_url(settings.redis_url), prefix=settings.redis_key_prefix)
    if settings.scaler_actuator == "docker":
        return DockerActuator(
            project=settings.scaler_docker_project,
            service=settings.scaler_docker_service,
            stop_timeout_s=settings.scaler_docker_stop_timeout_s,
            socket=settings.scaler_docker_socket,
        )
    if settings.scaler_actuator == "kubernetes":
        return KubernetesActuator(
            deployment=settings.scaler_k8s_deployment,
            namespace=settings.scaler_k8s_namespace,
            api_url=settings.scaler_k8s_api_url,
            service_account_dir=settings.scaler_k8s_service_account_dir,
        )
    return DryRunActuator()
