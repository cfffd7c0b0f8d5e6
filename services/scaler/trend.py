"""Least-squares trend of a time series, for the policy's prediction (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["linear_slope"]


def linear_slope(points: Sequence[tuple[float, float]]) -> float:
    """Slope (value per second) of the least-squares line through `(time, value)` points; 0 when
    fewer than two distinct times make a line."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t <= 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t
