"""`SCHED_FIFO` for the engine's threads: taken where permitted, refused cleanly where not.

Both outcomes are checked for real: in this process (root in CI: taken), and in a child process
that gives up root first (refused, the thread left as it was)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading

import pytest

from services.worker.realtime_scheduling import REALTIME_PRIORITY, is_realtime, use_realtime_scheduling

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling calls")


def _in_new_thread() -> tuple[str | None, int, bool, bool]:
    """Run `use_realtime_scheduling` on a fresh thread; returns its answer, the thread's policy and
    priority after it, whether `is_realtime` saw it from inside and from this thread by id."""
    seen: dict[str, object] = {}
    done = threading.Event()
    leave = threading.Event()

    def body() -> None:
        seen["reason"] = use_realtime_scheduling()
        seen["policy"] = os.sched_getscheduler(0)
        seen["priority"] = os.sched_getparam(0).sched_priority
        seen["inside"] = is_realtime()
        seen["id"] = threading.get_native_id()
        done.set()
        leave.wait(10)

    thread = threading.Thread(target=body)
    thread.start()
    assert done.wait(10)
    outside = is_realtime(int(seen["id"]))  # type: ignore[call-overload]
    leave.set()
    thread.join()
    reason = seen["reason"]
    assert reason is None or isinstance(reason, str)
    if reason is None:
        assert (seen["policy"], seen["priority"]) == (os.SCHED_FIFO, REALTIME_PRIORITY)
    return reason, int(seen["policy"]), bool(seen["inside"]), outside  # type: ignore[call-overload]


def _may_use_realtime() -> bool:
    """CAP_SYS_NICE in the effective set (bit 23 of CapEff), or a real-time priority limit."""
    with open("/proc/self/status") as status:
        effective = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    return bool(effective & (1 << 23)) or soft == resource.RLIM_INFINITY or soft >= REALTIME_PRIORITY


def test_the_calling_thread_alone_goes_real_time_where_permitted() -> None:
    reason, policy, inside, outside = _in_new_thread()
    if reason is None:
        assert policy == os.SCHED_FIFO and inside and outside
    else:
        # Without the capability or a limit it must be refused as not permitted (with them, a
        # kernel whose cgroup has no real-time budget may still refuse, in its own words).
        assert "not permitted" in reason or _may_use_realtime()
        assert policy == os.SCHED_OTHER and not inside and not outside
    # Only that thread changed: this one still runs under the normal scheduler.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and not is_realtime()


def test_without_permission_the_thread_is_left_as_it_was() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give it up in a child process")
    child = (
        # Everything imported first: nobody may not read this interpreter's library folders.
        "import os, resource\n"
        "from services.worker.realtime_scheduling import use_realtime_scheduling, is_realtime\n"
        "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
        "os.setgid(65534); os.setuid(65534)\n"  # nobody: no capabilities left
        "reason = use_realtime_scheduling()\n"
        "print(repr(reason)); print(os.sched_getscheduler(0) == os.SCHED_OTHER, is_realtime())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    )
    assert result.returncode == 0, result.stderr
    reason, state = result.stdout.strip().splitlines()
    assert "not permitted" in reason
    assert state == "True False"
