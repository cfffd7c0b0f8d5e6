"""Entry point: `python -m services.batcher`."""

from __future__ import annotations

import asyncio
import signal

from services.batcher.service import BatcherService
from services.batcher.settings import BatcherSettings
from shared import event_loop
from shared.startup_heap import freeze_startup_heap
from shared.structured_logging import configure_logging


async def _serve(settings: BatcherSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = BatcherService(settings)
    await service.start()
    freeze_startup_heap()
    try:
        await stop.wait()
    finally:
        await service.stop()


def main() -> None:
    settings = BatcherSettings()
    configure_logging("batcher", settings.instance_id, level=settings.log_level, fmt=settings.log_format)
    event_loop.run(_serve(settings), loop=settings.event_loop)


if __name__ == "__main__":
    main()
