"""What this machine's CPU can do, read without importing torch (for the launcher).

The worker itself asks torch (`services.worker.precision.cpu_computes_bfloat16`); the launcher
must decide before any worker starts and should not pay torch's import for it, so it reads the
kernel's CPU flags. On Linux both answers agree (tests/services/worker/test_precision.py checks
torch's answer against these flags); elsewhere this one answers "unknown".
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BFLOAT16_FLAGS", "has_bfloat16_instructions"]

#: CPU flags (as /proc/cpuinfo names them) that mean bfloat16 arithmetic in hardware: AVX-512 BF16,
#: or AMX tiles (which come with AMX-BF16).
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_tile"})


def has_bfloat16_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """True/False from the CPU flags; None where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        # Safe: no /proc/cpuinfo (macOS, Windows, a locked-down container): the caller keeps its
        # default for an unknown CPU.
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(BFLOAT16_FLAGS & set(line.split(":", 1)[1].split()))
    return None
