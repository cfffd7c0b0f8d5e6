"""shared/model_store.py: where a GGUF's converted folder is, for every installed copy of it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from shared.model_store import ModelSource, prepare_model


def _gguf(folder: Path, content: bytes) -> ModelSource:
    folder.mkdir(parents=True)
    (folder / "tiny.gguf").write_bytes(content)
    return ModelSource("tiny", str(folder), "tiny.gguf")


def _converted(state_dir: Path, content: bytes) -> Path:
    """A converted folder already in place for `content` (so that no conversion runs)."""
    target = state_dir / "models" / f"tiny-{hashlib.sha256(content).hexdigest()[:12]}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    return target


def test_copies_of_one_gguf_share_one_converted_folder(tmp_path: Path) -> None:
    content = os.urandom(4096)
    target = _converted(tmp_path / "state", content)
    first = _gguf(tmp_path / "venv-a", content)
    second = _gguf(tmp_path / "venv-b", content)  # another install: other path, other mtime
    assert prepare_model(first, tmp_path / "state").path == str(target)
    assert prepare_model(second, tmp_path / "state").path == str(target)
    assert len(list((tmp_path / "state" / "models" / ".digests").iterdir())) == 2  # one per copy


def test_another_file_gets_another_folder_and_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    old, new = os.urandom(4096), os.urandom(4096)
    old_target, new_target = _converted(tmp_path / "state", old), _converted(tmp_path / "state", new)
    source = _gguf(tmp_path / "venv", old)
    assert prepare_model(source, tmp_path / "state").path == str(old_target)
    weights = Path(source.path) / "tiny.gguf"
    weights.write_bytes(new)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a later mtime, surely
    assert prepare_model(source, tmp_path / "state").path == str(new_target)
    shutil.rmtree(tmp_path / "state" / "models" / ".digests")  # the memo is only a shortcut
    assert prepare_model(source, tmp_path / "state").path == str(new_target)


def test_a_folder_model_is_used_as_it_is(tmp_path: Path) -> None:
    source = ModelSource("plain", str(tmp_path))
    assert prepare_model(source, tmp_path / "state") is source
