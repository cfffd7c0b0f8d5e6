"""Entry point: ``python -m services.worker`` (settings from ``LGC_*`` environment variables)."""

from __future__ import annotations

import logging
import os
import sys

from pydantic import ValidationError

from services.worker.engine import EngineFailedError
from services.worker.engine_factory import BackendUnavailableError
from services.worker.openmp_policy import apply_omp_wait_policy
from services.worker.service import serve
from services.worker.settings import WorkerSettings
from shared import event_loop
from shared.model_store import ModelNotFoundError
from shared.structured_logging import configure_logging

log = logging.getLogger("services.worker")


def main() -> int:
    # Weights never come from the network at run time (DESIGN.md §2); an operator may still
    # override this explicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        print(f"invalid worker settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging("worker", settings.instance_id, level=settings.log_level, fmt=settings.log_format)
    apply_omp_wait_policy(settings)  # before the engine imports torch
    try:
        event_loop.run(serve(settings), loop=settings.event_loop)
    except (BackendUnavailableError, ModelNotFoundError) as exc:
        log.error("cannot start the worker: %s", exc)
        return 1
    except EngineFailedError as exc:
        # The engine logged its traceback when it failed; a restart is the remedy.
        log.error("stopped after an engine failure: %s", exc)
        return 1
    except Exception:
        # Safe: the process is exiting; the traceback is the operator's diagnosis.
        log.exception("the worker failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
