"""`python -m services.guardian`: run one guardian until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from services.guardian.service import GuardianService
from services.guardian.settings import GuardianSettings
from shared import event_loop
from shared.startup_heap import freeze_startup_heap
from shared.structured_logging import configure_logging

log = logging.getLogger("services.guardian")


async def _run(settings: GuardianSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = GuardianService(settings)
    try:
        await service.start()
        freeze_startup_heap()
        await service.serve(stop)
    finally:
        await service.stop()
        log.info("guardian stopped")


def main() -> int:
    try:
        settings = GuardianSettings()
    except ValidationError as exc:
        print(f"guardian: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging("guardian", settings.instance_id, level=settings.log_level, fmt=settings.log_format)
    try:
        event_loop.run(_run(settings), loop=settings.event_loop)
    except Exception:
        # Safe: logged with its cause; the non-zero exit tells the supervisor (lgc up, compose,
        # Kubernetes) to report or restart it.
        log.exception("guardian failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
