"""`run_until_stopped` (the core of `lgc up`) in a real launcher process: SIGTERM/SIGINT stop
everything with exit code 0, a dying service stops everything with exit code 1, and even a
SIGKILLed launcher leaves no service behind."""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.shared.launcher.conftest import process_gone

REPO = Path(__file__).resolve().parents[3]


class Launcher:
    """The launcher process, its output read on a thread (so the test can time out)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.shared.launcher.run_fake_cluster", str(tmp_path / "state"), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._started = time.monotonic()
        #: Every line with the seconds since start when it came, for a failure's message.
        self.timeline: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.timeline.append(f"{time.monotonic() - self._started:7.2f} {line.rstrip()}")
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"launcher ended before {prefix!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def pids(self) -> dict[str, int]:
        return json.loads(self.wait_for("PIDS ")[len("PIDS ") :])

    def finish(self, timeout_s: float = 30) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            # Where it hangs: every thread's stack (faulthandler on SIGUSR1), then its whole output.
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            self.proc.kill()
            self.proc.wait(10)
            time.sleep(0.5)  # the reader thread takes the last lines
            raise AssertionError(f"launcher still running after {timeout_s} s:\n" + "\n".join(self.timeline))
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return code


def _wait_gone(pids: dict[str, int], timeout_s: float = 15) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = {n: p for n, p in pids.items() if not process_gone(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_everything_with_exit_code_0(tmp_path, sig) -> None:
    launcher = Launcher(tmp_path)
    pids = launcher.pids()
    assert {"kafka", "redis", "gateway", "worker-0", "scaler"} <= set(pids)
    launcher.proc.send_signal(sig)
    assert launcher.finish() == 0
    assert "[lgc] stop requested; stopping (press Ctrl-C again to kill at once)" in launcher.lines
    assert "[worker-0] fake worker-0 stopping" in launcher.lines
    assert _wait_gone(pids) == {}


def _signal_thread(pid: int, tid: int, sig: signal.Signals) -> None:
    """Send `sig` to one thread of another process (tgkill), not to the process as a whole."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, int(sig)) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {sig.name})")


def test_a_stop_signal_taken_by_another_thread_stops_everything(tmp_path) -> None:
    # The kernel may hand a process's signal to any thread that does not block it; the main
    # thread, blocked on a lock in `cluster.wait()`, must wake all the same.
    launcher = Launcher(tmp_path)
    pids = launcher.pids()
    pid = launcher.proc.pid
    others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    assert others, "the launcher runs output and exit-watch threads"
    # Let the main thread reach its wait: a signal taken elsewhere while it still runs Python code
    # is handled at its next bytecode; the hang this test guards against needs it asleep.
    time.sleep(0.5)
    _signal_thread(pid, others[-1], signal.SIGTERM)
    assert launcher.finish() == 0
    assert "[lgc] stop requested; stopping (press Ctrl-C again to kill at once)" in launcher.lines
    assert _wait_gone(pids) == {}


def test_a_second_stop_signal_kills_at_once(tmp_path) -> None:
    # The fake worker ignores SIGTERM; the grace period is 10 s, a second signal cuts it short.
    launcher = Launcher(tmp_path, "--ignore-sigterm")
    pids = launcher.pids()
    launcher.proc.send_signal(signal.SIGTERM)
    launcher.wait_for("[lgc] stop requested")
    started = time.monotonic()
    launcher.proc.send_signal(signal.SIGINT)
    assert launcher.finish() == 0
    assert time.monotonic() - started < 8, "\n".join(launcher.timeline)
    assert _wait_gone(pids) == {}


def test_a_dying_service_stops_everything_with_exit_code_1(tmp_path) -> None:
    launcher = Launcher(tmp_path, "--die-after", "1")
    pids = launcher.pids()
    assert launcher.finish() == 1
    assert any("worker-0 exited unexpectedly with code 7" in line for line in launcher.lines)
    assert _wait_gone(pids) == {}


def test_a_stop_signal_during_start_up_stops_everything_with_exit_code_0(tmp_path) -> None:
    launcher = Launcher(tmp_path, "--never-ready")  # the worker would hold start-up for 300 s
    launcher.wait_for("[worker-0] fake worker-0 listening")
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.finish(timeout_s=30) == 0
    assert "[lgc] start-up stopped; stopping what was started" in launcher.lines
    # Every process the launcher reported starting: kafka, redis and the services.
    pids = {
        line: int(line.split("(pid ")[1].split(")")[0])
        for line in launcher.lines
        if line.startswith("[lgc] ") and "(pid " in line
    }
    assert len(pids) == 7, pids  # kafka, redis, gateway, batcher, worker-0, guardian, scaler
    assert _wait_gone(pids) == {}


def _describe(pid: int) -> str:
    """What a left-over process is doing (state, signal masks, wait channel), for the failure."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError as exc:  # Safe: it ended while we looked; say so instead.
        return f"{pid}: gone while inspected ({exc})"
    keep = ("State", "PPid", "Threads", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    fields = [line for line in status if line.split(":")[0] in keep]
    return f"{pid} {cmdline!r} wchan={wchan} " + " ".join(fields)


def test_a_killed_launcher_leaves_no_service_behind(tmp_path) -> None:
    launcher = Launcher(tmp_path)
    pids = launcher.pids()
    launcher.proc.kill()  # no handler runs: only the children's parent-death signal can help
    launcher.finish()
    left = _wait_gone(pids)
    assert left == {}, "\n".join([_describe(pid) for pid in left.values()] + launcher.lines)
