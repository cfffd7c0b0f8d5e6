"""Sets how torch's OpenMP thread team waits, before torch is imported.

libgomp (the OpenMP runtime of torch's CPU builds) reads ``OMP_WAIT_POLICY`` once, when it is
loaded, so this must run in the entry point before anything imports torch. With its default, a
thread that reaches a barrier spins for a while before sleeping: on cores shared with the gateway,
batcher and broker, that spinning takes the CPU they need, and a barrier waits on a thread whose
core another process holds (seed 001: host-side work must not busy-wait).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

from services.worker.settings import WorkerSettings

__all__ = ["apply_omp_wait_policy"]

log = logging.getLogger(__name__)


def apply_omp_wait_policy(settings: WorkerSettings, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Put `worker_omp_wait_policy` into `environ` unless `OMP_WAIT_POLICY` is already there or
    the policy is `inherit`; returns the policy in force (None: the runtime's default)."""
    if "OMP_WAIT_POLICY" in environ or settings.worker_omp_wait_policy == "inherit":
        return environ.get("OMP_WAIT_POLICY")
    if "torch" in sys.modules and environ is os.environ:
        # Too late for this process (libgomp has read its environment); said, not raised, since
        # the worker still serves correctly, only with the runtime's default waiting.
        log.warning("torch is already imported: worker_omp_wait_policy has no effect in this process")
    policy = settings.worker_omp_wait_policy.upper()
    environ["OMP_WAIT_POLICY"] = policy
    return policy
