"""Real-time scheduling (`SCHED_FIFO`) for the transformers engine's compute threads on CPU.

On a machine whose cores the worker shares with the rest of the cluster (the embedded cluster, a
small node), the gateway, batcher, broker and guardian wake in a burst after every decode step,
when its tokens flow out. Under the normal scheduler (CFS/EEVDF) those wake-ups preempt the decode
thread, and it waits for a core; no `nice` value stops that, since a woken task is still given its
turn. Measured on the 2-core benchmark machine (SmolLM2-135M bf16, one decode thread, 32 streams,
192 requests): the engine thread ran 84 % of a sustained run and waited for a core 12 %, and a
decode step took 47.5-53 ms in the cluster against 45 ms alone.

A thread under `SCHED_FIFO` is never preempted by normal threads: it runs until it sleeps (the
engine's condition variable, between requests), and normal threads get the other cores and the
time it leaves. The lowest real-time priority (1) is enough for that and stays below the kernel's
own real-time threads. The kernel's real-time throttling (`/proc/sys/kernel/sched_rt_runtime_us`,
95 % of each second by default) still leaves normal threads some time on every core.

Applied only where it is safe (`TransformersEngine.start_thread`): on CPU, when the decode threads
leave at least one core of the process to the rest (so the worker's own event loop and the other
services always have one between prefills), and only where the process may: root, or
`CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of at least 1 (`ulimit -r`). Elsewhere the threads keep
the normal scheduler and the worker says so once in its log.
"""

from __future__ import annotations

import os

__all__ = ["REALTIME_PRIORITY", "is_realtime", "use_realtime_scheduling"]

#: The `SCHED_FIFO` priority the engine's threads take: the lowest, above every normal thread.
REALTIME_PRIORITY = 1


def use_realtime_scheduling() -> str | None:
    """Put the calling thread under `SCHED_FIFO` at `REALTIME_PRIORITY` (Linux applies the policy
    to the calling thread alone, and threads it starts later inherit it). Returns None when done,
    otherwise why not (the thread's scheduling is then unchanged)."""
    if not hasattr(os, "sched_setscheduler"):
        return "this platform has no sched_setscheduler"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except PermissionError:
        # Safe: the thread keeps the normal scheduler, which only costs speed.
        return "not permitted: needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1"
    except OSError as exc:
        # Safe, as above: e.g. EINVAL where the kernel has no real-time class for this cgroup.
        return f"refused by the kernel: {exc}"
    return None


def is_realtime(thread_id: int = 0) -> bool:
    """Whether the thread `thread_id` (a native id; 0: the calling thread) runs under `SCHED_FIFO`."""
    return hasattr(os, "sched_getscheduler") and os.sched_getscheduler(thread_id) == os.SCHED_FIFO
