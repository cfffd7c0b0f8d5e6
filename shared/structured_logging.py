"""Structured logs: one line per event, carrying the service, instance and request id.

The request id comes from a context variable, so code deep inside a request's task logs it without
passing it around: ``with request_context(request_id): ...``. Extra fields given as
``log.info("...", extra={...})`` become JSON keys.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "current_request_id", "request_context"]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("lgc_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def current_request_id() -> str | None:
    """The request id of the task that is running, if any."""
    return _request_id.get()


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Tag every log line written inside the block with `request_id`."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.instance = self.instance
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STANDARD_ATTRS and k not in ("service", "instance", "request_id") and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": getattr(record, "service", None),
            "instance": getattr(record, "instance", None),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A readable line: time, level, logger, message, request id and extras as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [ts, f"{record.levelname:<7}", record.name, record.getMessage()]
        if getattr(record, "request_id", None):
            parts.append(f"request_id={record.request_id}")
        parts += [f"{k}={v}" for k, v in _extras(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(service: str, instance: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Send this process's logs to stderr in the chosen format (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter(service, instance))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries log every reconnect at INFO; keep them to warnings.
    for noisy in ("aiokafka", "kafka", "httpx", "httpcore", "urllib3", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
