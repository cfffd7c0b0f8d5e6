"""A stand-in for a cluster service in launcher tests: starts in milliseconds, answers /ready and
/metrics on the port named by an environment variable, and behaves as told on the command line.

    python fake_service.py LGC_GATEWAY_HTTP_PORT [--crash-with CODE] [--never-ready]
                           [--ignore-sigterm] [--grandchild] [--die-after S] [--ready-after S]
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import subprocess
import sys
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    ready = True
    ready_from = 0.0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/ready":
            ok = self.ready and time.monotonic() >= self.ready_from
            self._answer(200 if ok else 503, b'{"ready": true}')
        elif self.path == "/metrics":
            self._answer(200, b"fake_up 1\n")
        else:
            self._answer(404, b"{}")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass  # keep the test output to what the test asserts on


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port_env")
    parser.add_argument("--crash-with", type=int)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--die-after", type=float)
    parser.add_argument("--ready-after", type=float, default=0.0)
    args = parser.parse_args()
    name = os.environ.get("LGC_INSTANCE_ID", "?")
    port = int(os.environ[args.port_env])
    print(f"fake {name} starting on port {port} kafka={os.environ.get('LGC_KAFKA_BOOTSTRAP')}", flush=True)
    if args.crash_with is not None:
        print(f"fatal: {name} cannot start (simulated)", file=sys.stderr, flush=True)
        sys.exit(args.crash_with)
    if args.grandchild:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"grandchild pid {child.pid}", flush=True)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # SIGTERM is blocked before any thread starts (threads inherit the mask) and collected by
        # sigwait below: it stays pending until the main thread takes it, whenever it comes.
        # A Python-level handler could be missed if the signal landed while the main thread was
        # entering its blocking wait, and the killed-launcher test would see a survivor.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _Handler.ready = not args.never_ready
    _Handler.ready_from = time.monotonic() + args.ready_after
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    print(f"fake {name} listening", flush=True)
    if args.ignore_sigterm:
        stopped = threading.Event().wait(args.die_after)  # only SIGKILL ends it before die_after
    elif args.die_after is None:
        stopped = signal.sigwait({signal.SIGTERM}) == signal.SIGTERM
    else:
        stopped = signal.sigtimedwait({signal.SIGTERM}, args.die_after) is not None
    if args.die_after is not None and not stopped:
        print(f"{name} dying on purpose", flush=True)
        os._exit(7)
    print(f"fake {name} stopping", flush=True)
    server.shutdown()


if __name__ == "__main__":
    main()
