"""The worker service: a gRPC server around one model (transformers or simulated backend).

Run it with ``python -m services.worker``; embed it with :class:`WorkerService` or :func:`serve`.
"""

from services.worker.service import WorkerService, serve
from services.worker.settings import WorkerSettings

__all__ = ["WorkerService", "WorkerSettings", "serve"]
