"""Where the launcher sends its children's output: each line prefixed with the process name
(``[worker-0] ...``) and handed to a sink (stdout, a file, a list in tests).

Each child's merged stdout/stderr is read by one thread that blocks on ``readline`` (no polling);
the last lines are kept so that a child that dies during start-up can be reported with them.
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["FileSink", "LockedSink", "LogSink", "OutputPump", "stdout_sink"]

#: Receives one finished line (no trailing newline). Called from the pump threads, one at a time.
LogSink = Callable[[str], None]


def stdout_sink(line: str) -> None:
    """Write the line to this process's stdout at once (the default sink of `lgc up`)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class FileSink:
    """Append lines to a file (line-buffered, so a crash loses at most one line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8", buffering=1)

    def __call__(self, line: str) -> None:
        self._file.write(line + "\n")

    def close(self) -> None:
        self._file.close()


class LockedSink:
    """Serialises calls into a sink so lines from several pump threads never interleave."""

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self._sink(line)


class OutputPump:
    """Copies one child's output to a sink, line by line, prefixed with `[name] `, on its own thread."""

    def __init__(self, name: str, stream: IO[bytes], sink: LogSink, *, tail_lines: int = 50) -> None:
        self.name = name
        self._stream = stream
        self._sink = sink
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._tail_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"output-{name}", daemon=True)

    def start(self) -> OutputPump:
        self._thread.start()
        return self

    def tail(self) -> list[str]:
        """The last lines the child wrote (oldest first)."""
        with self._tail_lock:
            return list(self._tail)

    def join(self, timeout_s: float) -> None:
        """Wait until the child's end of the pipe is closed (all its output was copied)."""
        self._thread.join(timeout_s)

    def _run(self) -> None:
        prefix = f"[{self.name}] "
        try:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._tail_lock:
                    self._tail.append(line)
                try:
                    self._sink(prefix + line)
                except Exception:  # noqa: BLE001
                    # Safe: a broken sink (closed file, full disk) must not stop the draining,
                    # or the child would block on a full pipe; the line stays in the tail.
                    pass
        finally:
            self._stream.close()
