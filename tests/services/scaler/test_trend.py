"""linear_slope: the least-squares slope the policy extrapolates."""

from __future__ import annotations

import pytest

from services.scaler.trend import linear_slope


def test_slope_of_a_line_and_of_noise_around_it() -> None:
    assert linear_slope([(0, 1), (10, 3), (20, 5)]) == pytest.approx(0.2)
    assert linear_slope([(0, 1.1), (10, 2.9), (20, 5.2), (30, 6.8)]) == pytest.approx(0.19, abs=0.01)
    assert linear_slope([(0, 5), (5, 3), (10, 1)]) == pytest.approx(-0.4)


def test_too_few_points_or_one_instant_give_no_trend() -> None:
    assert linear_slope([]) == 0.0
    assert linear_slope([(3, 9)]) == 0.0
    assert linear_slope([(3, 1), (3, 9)]) == 0.0
