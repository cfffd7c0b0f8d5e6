"""One builder of gateway gRPC requests for the integration tests of the gRPC API."""

from __future__ import annotations

from shared.protos import gateway_pb2
from tests.integration.conftest import MODEL

__all__ = ["gateway_request"]


def gateway_request(
    content: str = "What is the capital of France?", max_tokens: int = 12, **overrides: object
) -> gateway_pb2.GenerateRequest:
    """A greedy chat request to the served model; keyword overrides replace any field."""
    fields: dict[str, object] = dict(
        model=MODEL,
        messages=[gateway_pb2.ChatMessage(role="user", content=content)],
        max_tokens=max_tokens,
        temperature=0,
        has_temperature=True,
    )
    fields.update(overrides)
    return gateway_pb2.GenerateRequest(**fields)
