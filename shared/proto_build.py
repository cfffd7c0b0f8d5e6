"""Generates the Python code for the protos in ``shared/protos`` (``make protos``).

The generated modules are committed so that services import them without a build step;
``tests/shared/test_proto_build.py`` regenerates them into a temporary folder and fails when the
committed ones differ (stale code). grpcio-tools is pinned, so the output is reproducible.

Usage: ``python -m shared.proto_build [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

__all__ = ["PROTO_FILES", "generate", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path("shared") / "protos"
PROTO_FILES = ("worker.proto", "gateway.proto")


def generate(out_root: Path) -> list[Path]:
    """Write `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` for every proto under `out_root/shared/protos`."""
    out_dir = out_root / PROTO_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(files("grpc_tools") / "_proto")
    for name in PROTO_FILES:
        # Paths relative to the repo root make the generated imports read `from shared.protos import ...`.
        args = [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(REPO_ROOT / PROTO_DIR / name),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {name}")
    return sorted(out_dir.glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="root to write under (default: the repo)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
