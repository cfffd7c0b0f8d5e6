"""The thread cap of the BLAS libraries (numpy's OpenBLAS) in a service process.

OpenBLAS starts one thread per core and keeps its extra threads spinning for a while after each
call. The services call BLAS with small operands (spaCy's NER in the guardian, qdrant-client's
local-mode search in the gateway), which one thread does as fast, so the extra threads only burn
CPU that the worker's model would use on the same machine. Measured on 2 cores (2026-12-06): the
guardian's NER 8.8 against 5.7 ms of CPU per answer, a Qdrant local-mode search over 2,000 vectors
7.3 against 1.1 ms, both in the same wall time.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits

__all__ = ["cap_blas_threads"]


def cap_blas_threads(threads: int) -> None:
    """Limit every BLAS library loaded by now to `threads` threads, for every thread of the process.
    Call it after the libraries load (threadpoolctl only reaches those already loaded), from the
    thread that started the service: with OpenBLAS 0.3.31 a call from another thread no longer
    changes the count once any thread has set it (`tests/shared/test_blas_threads.py`)."""
    threadpool_limits(limits=threads, user_api="blas")
