"""Ports for the servers a test starts, one range per pytest-xdist worker.

Asking the kernel for port 0 and handing the number to a process that binds it later leaves a
window in which another worker, asking the same way, can be given the same number. Each worker
instead takes ports from a range of its own (below Linux's ephemeral range, 32768 and up, so
outgoing connections never sit on them), starting at a random place in it and skipping any
port that something already holds.
"""

from __future__ import annotations

import os
import random
import socket
import threading

FIRST_PORT = 20000
PORTS_PER_WORKER = 500
MAX_WORKERS = 25  # 20000 + 25 × 500 = 32500


def worker_index() -> int:
    """0 without xdist; 1 + N for xdist's worker ``gwN``."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not name.startswith("gw"):
        return 0
    return 1 + int(name.removeprefix("gw")) % (MAX_WORKERS - 1)


class _Range:
    def __init__(self) -> None:
        self.low = FIRST_PORT + worker_index() * PORTS_PER_WORKER
        self.next = self.low + random.randrange(PORTS_PER_WORKER)
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            for _ in range(PORTS_PER_WORKER):
                port = self.next
                self.next = self.low + (self.next + 1 - self.low) % PORTS_PER_WORKER
                with socket.socket() as sock:
                    try:
                        sock.bind(("127.0.0.1", port))
                    except OSError:
                        continue
                return port
        raise RuntimeError(f"no free port in {self.low}–{self.low + PORTS_PER_WORKER - 1}")


_RANGE = _Range()


def free_port() -> int:
    """A port of this worker's range that nothing holds now and that this process has not
    handed out recently."""
    return _RANGE.take()
