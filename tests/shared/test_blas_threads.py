"""The BLAS thread cap, on numpy's own OpenBLAS."""

from __future__ import annotations

import threading

import numpy  # noqa: F401  (loads the BLAS library the cap reaches)
from threadpoolctl import threadpool_info, threadpool_limits

from shared.blas_threads import cap_blas_threads


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_the_cap_reaches_the_loaded_blas_library() -> None:
    before = max(_blas_threads())
    try:
        cap_blas_threads(2)
        assert _blas_threads() == {2}
        cap_blas_threads(1)
        assert _blas_threads() == {1}
    finally:
        threadpool_limits(limits=before, user_api="blas")


def test_a_cap_from_the_main_thread_holds_in_other_threads() -> None:
    # The services cap from their event-loop thread and call BLAS from their thread pools.
    before = max(_blas_threads())
    seen: list[set[int]] = []
    try:
        cap_blas_threads(2)
        cap_blas_threads(1)
        thread = threading.Thread(target=lambda: seen.append(_blas_threads()))
        thread.start()
        thread.join()
        assert seen == [{1}]
    finally:
        threadpool_limits(limits=before, user_api="blas")
