"""`python -m services.scaler` refuses invalid settings with exit code 2 and the reason (a real
run under SIGTERM is covered by tests/shared/launcher/test_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_min_above_max_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.scaler"],
        env={**os.environ, "LGC_SCALER_MIN_REPLICAS": "5", "LGC_SCALER_MAX_REPLICAS": "2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "scaler_min_replicas must not exceed scaler_max_replicas" in done.stderr
