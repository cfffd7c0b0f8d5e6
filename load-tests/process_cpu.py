"""CPU time of processes from /proc, for the benchmarks that charge a run to the cluster's
processes (`idle_cpu.py`, `worker_peer_bench.py`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["TICKS_PER_S", "descendants", "stat_ticks", "tree_cpu_seconds"]

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def stat_ticks(path: Path) -> int:
    """utime + stime (fields 14 and 15) of a /proc stat file, in clock ticks."""
    text = path.read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return int(fields[11]) + int(fields[12])


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid` (a service may start helpers of its own, e.g. vLLM's engine core)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue  # Safe: a thread that ended has no children to report.
            for kid in map(int, kids):
                found.append(kid)
                todo.append(kid)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds so far of `pid` and its living descendants (each process's own stat counts its
    threads, ended ones included)."""
    ticks = 0
    for proc in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, ValueError):  # a process that already ended is not charged
            ticks += stat_ticks(Path(f"/proc/{proc}/stat"))
    return ticks / TICKS_PER_S
