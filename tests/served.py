"""billsync's API served over real HTTP in a thread (for webhooks and the browser)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from billsync.api.app import create_app
from billsync.api.web_security import proxy_options
from billsync.bootstrap import Billsync
from tests.ports import free_port
from tests.waiting import wait_until


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@contextmanager
def serve(billsync: Billsync) -> Iterator[str]:
    """Served as ``billsync serve`` serves it (the same proxy-header options)."""
    port = free_port()
    server = _Server(
        uvicorn.Config(
            create_app(billsync),
            host="127.0.0.1",
            port=port,
            log_level="error",
            **proxy_options(billsync.settings),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "billsync's API starts")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
