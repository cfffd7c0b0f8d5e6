"""`python -m services.gateway`: run one gateway until SIGTERM or SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from shared import event_loop
from shared.structured_logging import configure_logging

from services.gateway.service import serve
from services.gateway.settings import GatewaySettings

__all__ = ["main"]

log = logging.getLogger("services.gateway")


async def _main(settings: GatewaySettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", settings.instance_id, level=settings.log_level, fmt=settings.log_format)
    try:
        event_loop.run(_main(settings), loop=settings.event_loop)
    except Exception:
        # Safe: the process is ending; the cause is logged and the exit code says it failed.
        log.exception("the gateway failed")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
