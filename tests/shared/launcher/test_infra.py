"""ManagedProcess.stop on a real child process that ignores SIGTERM."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from shared.launcher.infra import ManagedProcess

_IGNORES_SIGTERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    popen = subprocess.Popen(
        [sys.executable, "-c", _IGNORES_SIGTERM], stdout=subprocess.PIPE, start_new_session=True
    )
    assert popen.stdout is not None and popen.stdout.readline().strip() == b"ready"  # handler installed
    caplog.set_level(logging.WARNING, logger="shared.launcher.infra")
    assert ManagedProcess("stubborn", popen).stop(grace_s=0.2) == -9
    (record,) = [r for r in caplog.records if "did not stop in time" in r.getMessage()]
    assert record.managed_process == "stubborn"  # type: ignore[attr-defined]
