"""The gateway: OpenAI-compatible HTTP and gRPC front door of the cluster (see README.md)."""

from services.gateway.service import GatewayService, serve
from services.gateway.settings import GatewaySettings

__all__ = ["GatewayService", "GatewaySettings", "serve"]
