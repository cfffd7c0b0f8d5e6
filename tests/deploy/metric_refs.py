"""Check PromQL expressions against the metrics the services export (names and labels)."""

from __future__ import annotations

from tests.deploy.exported_metrics import BUILTIN_LABELS, BUILTIN_METRICS, exported_metrics
from tests.deploy.promql_names import promql_refs

__all__ = ["problems_in"]


def problems_in(expr: str, where: str) -> list[str]:
    """What is wrong with one expression: unknown metrics, labels no referenced metric has."""
    exported = exported_metrics()
    refs = promql_refs(expr)
    problems: list[str] = []
    if not refs.metrics:
        problems.append(f"{where}: no metric in {expr!r}")
    available: set[str] = set(BUILTIN_LABELS)
    for name in refs.metrics:
        if name in BUILTIN_METRICS:
            available.update(refs.selector_labels.get(name, ()))
            continue
        metric = exported.get(name)
        if metric is None:
            problems.append(f"{where}: {name} is not exported by any service")
            continue
        available.update(metric.labels)
        for label in refs.selector_labels.get(name, ()):
            if label not in metric.labels | BUILTIN_LABELS:
                problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(metric.labels)})")
    for label in refs.grouping_labels - available:
        problems.append(f"{where}: groups by {label!r}, which none of {sorted(refs.metrics)} carries")
    return problems
