"""`lgc up` with fake services, for tests that signal or kill the launcher process itself.

    python -m tests.shared.launcher.run_fake_cluster STATE_DIR [FAKE WORKER OPTIONS...]   (from the repo root)

Prints `PIDS <json>` once the cluster is ready, then runs until signalled; its exit code is
`run_until_stopped`'s. SIGUSR1 prints every thread's stack (a test that times out asks for them).
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys

from shared.launcher.cluster import ClusterConfig, EmbeddedCluster
from shared.launcher.foreground import run_until_stopped
from shared.launcher.ports import free_port_settings
from tests.shared.launcher.conftest import fake_commands


def main() -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    state_dir = sys.argv[1]
    worker_args = sys.argv[2:]  # e.g. --die-after 1, --never-ready
    cluster = EmbeddedCluster(
        ClusterConfig(
            settings=free_port_settings(workers=1, state_dir=state_dir, stop_grace_s=10),
            commands=fake_commands(worker=worker_args),
        )
    )
    return run_until_stopped(cluster, lambda c: c.write("PIDS " + json.dumps(c.pids)))


if __name__ == "__main__":
    sys.exit(main())
