"""`python -m services.guardian` as a real process: ready over HTTP, graceful exit on SIGTERM,
exit code 2 with a clear message on invalid settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from services.guardian.settings import GuardianSettings


def _env(settings: GuardianSettings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "LGC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LGC_REDIS_URL": settings.redis_url,
        # The process lifecycle is under test here, not the models (their tests load them): without
        # the two model-based detectors the guardian is ready in seconds, not tens of seconds.
        "LGC_GUARDIAN_PII_NER_ENABLED": "false",
        "LGC_GUARDIAN_SEMANTIC_ENABLED": "false",
        "LGC_TOPIC_PREFIX": settings.topic_prefix,
        "LGC_GUARDIAN_HTTP_PORT": str(settings.guardian_http_port),
        "LGC_INSTANCE_ID": "guardian-test",
        "LGC_LOG_FORMAT": "text",
        **extra,
    }


def test_runs_until_sigterm_and_exits_cleanly(guardian_settings: GuardianSettings) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.guardian"],
        env=_env(guardian_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{guardian_settings.guardian_http_port}/ready"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            assert time.monotonic() < deadline, "guardian not ready within 60 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        output = proc.stdout.read() if proc.stdout else ""
        assert "guardian ready" in output and "guardian stopped" in output
        assert "pii-patterns" in output  # the catalog's detectors, named in the ready line
    finally:
        proc.kill()
        proc.wait()


def test_invalid_settings_exit_2_with_the_reason(guardian_settings: GuardianSettings) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.guardian"],
        env=_env(guardian_settings, LGC_GUARDIAN_HTTP_PORT="99999"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid settings" in done.stderr and "guardian_http_port" in done.stderr
