"""The guardian's synchronous check API served in-process over real HTTP, judged by small real
detectors the tests switch on and off: for the tests of the services that call the check (the
gateway's and the batcher's blocking mode)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.guardian.api import create_app
from services.guardian.detector_base import LoopingDetector
from services.guardian.evaluator import Evaluator
from services.guardian.findings import DetectorCost, Finding, TextKind
from services.guardian.http_server import HttpServer
from services.guardian.metrics import GuardianMetrics
from services.guardian.sampling import LagSampler
from services.guardian.verdict_pipeline import VerdictPipeline
from shared.launcher.infra import find_free_port

__all__ = ["Guardian", "SwitchableDetector", "serve_guardian_check"]


@dataclass
class SwitchableDetector(LoopingDetector):
    """Finds `word` when switched on: `harm.S1` (0.99: block) or, with a placeholder, `pii.name` (redact)."""

    word: str = "fake"
    on: bool = False
    placeholder: str | None = None
    name: str = "switchable"
    version: str = "1"
    cost: DetectorCost = "cheap"
    delay_s: float = 0.0
    """Seconds each check takes (a slow guardian); the guardian runs detectors on its own threads."""

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        if self.delay_s:
            time.sleep(self.delay_s)
        at = text.find(self.word)
        if not self.on or at < 0:
            return []
        category = "pii.name" if self.placeholder else "harm.S1"
        return [Finding(category, 0.99, self.detector_id, at, at + len(self.word), self.placeholder)]


@dataclass
class Guardian:
    url: str
    blocker: SwitchableDetector
    redactor: SwitchableDetector
    metrics: GuardianMetrics


@asynccontextmanager
async def serve_guardian_check(*, block_word: str, redact_word: str) -> AsyncIterator[Guardian]:
    """The check API on a free port (no verdict cache: the tests switch detectors); both detectors
    start switched off."""
    blocker = SwitchableDetector(word=block_word, name="blocker")
    redactor = SwitchableDetector(word=redact_word, placeholder="[REDACTED]", name="redactor")
    metrics = GuardianMetrics()
    pipeline = VerdictPipeline(
        Evaluator([blocker, redactor]), metrics, sampler=LagSampler(floor=1.0, lag_low=0, lag_high=1)
    )
    port = find_free_port()
    server = HttpServer(create_app(pipeline, metrics, lambda: True), "127.0.0.1", port)
    await server.start()
    try:
        yield Guardian(f"http://127.0.0.1:{port}", blocker, redactor, metrics)
    finally:
        await server.stop()
