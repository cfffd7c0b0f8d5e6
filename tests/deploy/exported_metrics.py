"""Every Prometheus metric the services export, read from the code itself: each service's metrics
class is built on a fresh CollectorRegistry and the registry lists the sample names it would expose
(``lgc_gateway_requests_total``, ``lgc_worker_ttft_seconds_bucket``, ...) with their label names.

Dashboards and alert rules are checked against this, so a renamed or removed metric fails the
tests instead of leaving an empty panel or an alert that can never fire.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache

from prometheus_client import CollectorRegistry

__all__ = ["BUILTIN_LABELS", "BUILTIN_METRICS", "ExportedMetric", "exported_metrics"]

#: Labels Prometheus adds to every scraped sample (plus `pod` from the Kubernetes relabelling).
BUILTIN_LABELS = frozenset({"job", "instance", "pod", "cluster"})
#: Series Prometheus makes itself.
BUILTIN_METRICS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

#: Values for constructor parameters the metrics classes may require (matched by name).
_CONSTRUCTOR_ARGS = {"instance": "deploy-test", "max_inflight": 8}


@dataclass(frozen=True)
class ExportedMetric:
    """One sample name a service exports and the labels its samples carry."""

    name: str
    labels: frozenset[str]


def _metrics_classes() -> dict[str, type]:
    from services.batcher.metrics import BatcherMetrics
    from services.gateway.metrics import GatewayMetrics
    from services.guardian.metrics import GuardianMetrics
    from services.scaler.metrics import ScalerMetrics
    from services.worker.metrics import WorkerMetrics

    return {
        "gateway": GatewayMetrics,
        "batcher": BatcherMetrics,
        "worker": WorkerMetrics,
        "guardian": GuardianMetrics,
        "scaler": ScalerMetrics,
    }


def _build(cls: type, registry: CollectorRegistry) -> object:
    """Instantiate a metrics class whatever its signature (registry first, known extras by name)."""
    params = list(inspect.signature(cls).parameters.values())
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for i, p in enumerate(params):
        if i == 0:
            args.append(registry)
        elif p.name in _CONSTRUCTOR_ARGS:
            if p.kind is p.KEYWORD_ONLY:
                kwargs[p.name] = _CONSTRUCTOR_ARGS[p.name]
            else:
                args.append(_CONSTRUCTOR_ARGS[p.name])
        elif p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{cls.__name__}: add a test value for its required parameter {p.name!r}")
    return cls(*args, **kwargs)


#: Suffixes of the samples each metric type exposes (the bare family name of a counter or
#: histogram is not a sample).
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def _sample_names(kind: str, names: tuple[str, ...] | list[str]) -> set[str]:
    suffixes = _SUFFIXES.get(kind)
    if suffixes is None:
        return set(names)
    return {n for n in names if n.endswith(suffixes)}


@cache
def exported_metrics() -> dict[str, ExportedMetric]:
    """Sample name -> ExportedMetric, for every service."""
    found: dict[str, ExportedMetric] = {}
    for service, cls in _metrics_classes().items():
        registry = CollectorRegistry()
        _build(cls, registry)
        # prometheus_client keeps the collector -> sample names map privately (pinned version);
        # it is the exact list /metrics would expose, suffixes (_total, _bucket, ...) included.
        for collector, names in registry._collector_to_names.items():  # noqa: SLF001
            labels = frozenset(getattr(collector, "_labelnames", ()))
            kind = getattr(collector, "_type", "gauge")
            for name in names:
                if name not in _sample_names(kind, names):
                    continue
                assert name.startswith(f"lgc_{service}_"), f"{name} does not follow lgc_<service>_*"
                bucket_labels = labels | {"le"} if name.endswith("_bucket") else labels
                found[name] = ExportedMetric(name, bucket_labels)
    return found
