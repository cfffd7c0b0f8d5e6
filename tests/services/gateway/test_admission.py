"""The in-flight bound."""

from __future__ import annotations

import pytest

from services.gateway.admission import InflightLimiter
from services.gateway.errors import TooManyRequestsError


def test_refuses_beyond_the_limit_and_releases_once() -> None:
    seen: list[int] = []
    limiter = InflightLimiter(2, on_change=seen.append)
    first, second = limiter.acquire(), limiter.acquire()
    with pytest.raises(TooManyRequestsError) as refused:
        limiter.acquire()
    assert refused.value.status == 429 and refused.value.retry_after
    first.release()
    first.release()  # idempotent: releasing twice frees one slot only
    assert limiter.inflight == 1
    with limiter.acquire():
        assert limiter.inflight == 2
    assert limiter.inflight == 1
    second.release()
    assert limiter.inflight == 0
    assert seen == [1, 2, 1, 2, 1, 0]
