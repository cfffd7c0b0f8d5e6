"""ManagedProcess.stop on a real child process that ignores SIGTERM; find_free_port."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.launcher import infra
from shared.launcher.infra import ManagedProcess, find_free_port

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


def test_free_ports_lie_outside_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    first, last = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [find_free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if first <= p <= last]


def test_a_block_of_free_ports_is_consecutive_free_and_reserved() -> None:
    base = find_free_port(count=8)
    block = set(range(base, base + 8))
    for port in block:  # each one binds now
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert block.isdisjoint(find_free_port() for _ in range(300))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infra, "_handed_out", set())
    with contextlib.ExitStack() as listeners:
        for _ in range(20):  # a listening port whose next port is free (an ephemeral one may not be)
            listener = listeners.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            busy = listener.getsockname()[1]
            if infra._bindable("127.0.0.1", busy + 1):  # noqa: SLF001
                break
        monkeypatch.setattr(infra, "_pick_range", lambda: (busy, busy + 2))
        assert find_free_port() == busy + 1
        with pytest.raises(RuntimeError, match="found no 1 consecutive free ports"):
            find_free_port()  # the busy one is in use, the other one handed out already
