"""`python -m services.scaler`: run the scaler until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from services.scaler.service import ScalerService
from services.scaler.settings import ScalerSettings
from shared import event_loop
from shared.startup_heap import freeze_startup_heap
from shared.structured_logging import configure_logging

log = logging.getLogger("services.scaler")


async def _run(settings: ScalerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = ScalerService(settings)
    try:
        await service.start()
        freeze_startup_heap()
        await service.serve(stop)
    finally:
        await service.stop()
        log.info("scaler stopped")


def main() -> int:
    try:
        settings = ScalerSettings()
    except ValidationError as exc:
        print(f"scaler: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging("scaler", settings.instance_id, level=settings.log_level, fmt=settings.log_format)
    try:
        event_loop.run(_run(settings), loop=settings.event_loop)
    except Exception:
        # Safe: logged with its cause; the non-zero exit tells the supervisor to report or restart it.
        log.exception("scaler failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
