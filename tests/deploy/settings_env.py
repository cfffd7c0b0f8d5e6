"""Every environment variable the services read: `LGC_` + each field of every settings class."""

from __future__ import annotations

from functools import cache

__all__ = ["known_env_vars", "ops_ports"]

#: Variables read by libraries inside the images rather than by a settings class.
_LIBRARY_VARS = frozenset({"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"})


@cache
def known_env_vars() -> frozenset[str]:
    from services.batcher.settings import BatcherSettings
    from services.gateway.settings import GatewaySettings
    from services.guardian.settings import GuardianSettings
    from services.scaler.settings import ScalerSettings
    from services.worker.settings import WorkerSettings
    from shared.launcher.settings import LauncherSettings

    names = set(_LIBRARY_VARS)
    for cls in (GatewaySettings, BatcherSettings, WorkerSettings, GuardianSettings, ScalerSettings, LauncherSettings):
        names.update(f"LGC_{field.upper()}" for field in cls.model_fields)
    return frozenset(names)


@cache
def ops_ports() -> dict[str, int]:
    """Default port of each service's /metrics, /health and /ready, from its settings class."""
    from services.batcher.settings import BatcherSettings
    from services.gateway.settings import GatewaySettings
    from services.guardian.settings import GuardianSettings
    from services.scaler.settings import ScalerSettings
    from services.worker.settings import WorkerSettings

    return {
        "gateway": GatewaySettings.model_fields["gateway_http_port"].default,
        "batcher": BatcherSettings.model_fields["batcher_metrics_port"].default,
        "worker": WorkerSettings.model_fields["worker_metrics_port"].default,
        "guardian": GuardianSettings.model_fields["guardian_http_port"].default,
        "scaler": ScalerSettings.model_fields["scaler_metrics_port"].default,
    }
