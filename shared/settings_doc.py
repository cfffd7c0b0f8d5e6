"""Writes docs/settings.md: every `LGC_*` variable of every service, with its default,
constraint and docstring, generated from the settings classes (``make docs``).

A test regenerates it and fails when the committed file is stale, so the table never drifts from
the code.

Usage: ``python -m shared.settings_doc [--out FILE]``
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from shared.settings import ClusterSettings

__all__ = ["SETTINGS_CLASSES", "main", "render"]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: (title, "module:Class") for every settings class, the shared one first.
SETTINGS_CLASSES: list[tuple[str, str]] = [
    ("Every service (ClusterSettings)", "shared.settings:ClusterSettings"),
    ("gateway (GatewaySettings)", "services.gateway.settings:GatewaySettings"),
    ("batcher (BatcherSettings)", "services.batcher.settings:BatcherSettings"),
    ("worker (WorkerSettings)", "services.worker.settings:WorkerSettings"),
    ("guardian (GuardianSettings)", "services.guardian.settings:GuardianSettings"),
    ("scaler (ScalerSettings)", "services.scaler.settings:ScalerSettings"),
    ("lgc up (LauncherSettings)", "shared.launcher.settings:LauncherSettings"),
]

# Defaults that depend on the machine or process are shown as what they mean.
_DYNAMIC_DEFAULTS = {
    "instance_id": "`<host>-<pid>-<random>`",
    "state_dir": "`$XDG_CACHE_HOME/lgc` or `~/.cache/lgc`",
}


def _load(ref: str) -> type[ClusterSettings]:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _default(name: str, info: FieldInfo) -> str:
    if name in _DYNAMIC_DEFAULTS:
        return _DYNAMIC_DEFAULTS[name]
    if info.default is PydanticUndefined:
        return "(required)"
    value = info.default
    if value is None:
        return "unset"
    if hasattr(value, "value"):
        value = value.value
    return f"`{value}`"


def _constraint(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sym} {getattr(meta, attr)}")
        for attr in ("min_length", "max_length", "pattern"):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{attr} {getattr(meta, attr)}")
    annotation = getattr(info.annotation, "__args__", None)
    if annotation and all(isinstance(a, str) for a in annotation):
        parts.append(" or ".join(f"`{a}`" for a in annotation))
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    lines = [
        "# Settings",
        "",
        "Generated from the settings classes by `make docs` (`python -m shared.settings_doc`); a test",
        "fails when this file is stale. Every service reads `LGC_*` environment variables; each service",
        "has one settings class that adds its own fields to the shared ones, and every default works",
        "for the embedded cluster that `lgc up` starts.",
        "",
    ]
    shared_fields = set(ClusterSettings.model_fields)
    for title, ref in SETTINGS_CLASSES:
        cls = _load(ref)
        own = [n for n in cls.model_fields if cls is ClusterSettings or n not in shared_fields]
        lines += [f"## {title}", "", "| variable | default | constraint | meaning |", "| --- | --- | --- | --- |"]
        for name in own:
            info = cls.model_fields[name]
            lines.append(
                f"| `LGC_{name.upper()}` | {_default(name, info)} | {_cell(_constraint(info))} "
                f"| {_cell(info.description or '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "settings.md")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render())
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
