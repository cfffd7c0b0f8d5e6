"""OutputPump and sinks: prefixed lines, kept tail, a broken sink does not stop the draining."""

from __future__ import annotations

import subprocess
import sys

from shared.launcher.output import FileSink, LockedSink, OutputPump


def _child(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_lines_are_prefixed_and_the_tail_is_kept() -> None:
    lines: list[str] = []
    proc = _child("import sys\nfor i in range(100): print('line', i)\nprint('oops', file=sys.stderr)")
    assert proc.stdout is not None
    pump = OutputPump("svc", proc.stdout, LockedSink(lines.append), tail_lines=5).start()
    proc.wait(10)
    pump.join(10)
    assert lines[0] == "[svc] line 0"
    assert lines[-1] == "[svc] oops"
    assert len(lines) == 101
    assert pump.tail() == ["line 96", "line 97", "line 98", "line 99", "oops"]


def test_a_failing_sink_does_not_block_the_child(tmp_path) -> None:
    def broken(line: str) -> None:
        raise OSError("disk full")

    # 2 MB of output: far more than a pipe buffer, so the child would block if nobody drained it.
    proc = _child("import sys\nfor i in range(20000): sys.stdout.write('x' * 100 + '\\n')\nprint('done')")
    assert proc.stdout is not None
    pump = OutputPump("svc", proc.stdout, broken).start()
    assert proc.wait(30) == 0
    pump.join(10)
    assert pump.tail()[-1] == "done"


def test_file_sink_appends_lines(tmp_path) -> None:
    sink = FileSink(tmp_path / "cluster.log")
    sink("[a] one")
    sink("[b] two")
    sink.close()
    assert (tmp_path / "cluster.log").read_text().splitlines() == ["[a] one", "[b] two"]
