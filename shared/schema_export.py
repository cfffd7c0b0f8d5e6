"""Publishes the record contracts for systems in any language: one JSON Schema per record and an
AsyncAPI 3.0 document describing every topic (``make schemas`` writes them to ``schemas/``).

A test regenerates both and fails when the committed files are stale.

Usage: ``python -m shared.schema_export [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.records import RECORD_TYPES, SCHEMA_VERSION
from shared.topics import Topics

__all__ = ["asyncapi_document", "json_schemas", "main", "write_all"]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: (topic pattern, record, who writes, who reads, key, description) — DESIGN.md §3.
_CHANNELS: list[tuple[str, str, str, str, str, str]] = [
    ("requests.high", "GenerationRequest", "gateway, upstream systems", "batchers (one group)", "request id",
     "High-priority generation requests."),
    ("requests.normal", "GenerationRequest", "gateway, upstream systems", "batchers (one group)", "request id",
     "Normal-priority generation requests."),
    ("requests.low", "GenerationRequest", "gateway, upstream systems", "batchers (one group)", "request id",
     "Low-priority generation requests."),
    ("replies.{instance}", "ReplyEvent", "batcher", "the gateway instance or upstream system named in reply_to",
     "request id", "Token deltas, then exactly one final or error event per request."),
    ("results", "GenerationResult", "batcher (and gateway for cache hits)", "guardian, analytics, upstream",
     "request id", "The outcome of every request."),
    ("cancellations", "Cancel", "gateway, upstream", "every batcher instance (broadcast)", "request id",
     "Stop work on a request."),
    ("metrics", "MetricsSnapshot", "every service", "scaler", "service instance", "Periodic key numbers."),
    ("verdicts", "GuardianVerdict", "guardian", "gateway (cache purge), upstream", "request id",
     "Safety verdicts."),
    ("scaling", "ScalingDecision", "scaler", "operators, audit", "service name", "Every scaling decision."),
]


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of every record, by record name."""
    out = {}
    for name, model in RECORD_TYPES.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://lgc.dev/schemas/v{SCHEMA_VERSION}/{name}.json"
        out[name] = schema
    return out


def asyncapi_document(prefix: str = "lgc") -> dict[str, Any]:
    """An AsyncAPI 3.0 document: channels (topics), their messages and the operations on them."""
    topics = Topics(prefix)
    schemas = json_schemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for suffix, record, writers, readers, key, description in _CHANNELS:
        channel_id = suffix.replace(".", "_").replace("{", "").replace("}", "")
        address = f"{topics.prefix}.{suffix}"
        channel: dict[str, Any] = {
            "address": address,
            "description": f"{description} Written by {writers}; read by {readers}. Key: {key}.",
            "messages": {record: {"$ref": f"#/components/messages/{record}"}},
        }
        if "{instance}" in suffix:
            channel["parameters"] = {"instance": {"description": "The gateway instance id (its reply_to)."}}
        channels[channel_id] = channel
        operations[f"publish_{channel_id}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"{writers} write {record}",
        }
        operations[f"consume_{channel_id}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"{readers} read {record}",
        }
    channels["deadletter"] = {
        "address": topics.deadletter,
        "description": "Records a consumer could not parse: the original key and value bytes, with the reason "
        "in headers lgc.dlq.error, lgc.dlq.topic, lgc.dlq.partition, lgc.dlq.offset, lgc.dlq.consumer, "
        "lgc.dlq.failed_at.",
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
    }
    messages: dict[str, Any] = {
        name: {
            "name": name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        for name in schemas
    }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "contentType": "application/octet-stream",
        "payload": {"type": "string", "description": "The original record bytes, unchanged."},
    }
    components_schemas: dict[str, Any] = {}
    for name, schema in schemas.items():
        schema = dict(schema)
        defs = schema.pop("$defs", {})
        schema.pop("$schema", None)
        schema.pop("$id", None)
        components_schemas.update(defs)
        components_schemas[name] = schema
    document = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "LLM Guardian Cluster records",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": "Topics and records of LLM Guardian Cluster. Every record is JSON with a `v` "
            "(format version) field; unknown fields are ignored by consumers, so producers may add fields.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": components_schemas},
    }
    # pydantic writes $defs references as #/$defs/X; in the AsyncAPI document they live in components.
    return json.loads(json.dumps(document).replace('"#/$defs/', '"#/components/schemas/'))


def write_all(out_dir: Path) -> list[Path]:
    """Write every schema and the AsyncAPI document under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    path = out_dir / "asyncapi.json"
    path.write_text(json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n")
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "schemas")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
