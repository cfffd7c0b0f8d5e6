"""CPU flags read without torch: the parse, and what an unreadable file means."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cpu_features import has_bfloat16_instructions


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx avx2 fma", False),
        ("fpu avx2 avx512f avx512bw avx512_bf16", True),
        ("fpu avx2 avx512f amx_bf16 amx_tile amx_int8", True),
    ],
)
def test_flags_decide(tmp_path: Path, flags: str, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert has_bfloat16_instructions(cpuinfo) is expected


def test_unknown_without_the_file_or_its_flags(tmp_path: Path) -> None:
    assert has_bfloat16_instructions(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert has_bfloat16_instructions(tmp_path / "noflags") is None
