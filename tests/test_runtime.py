"""A server process settles its heap once started: the garbage collector stops re-walking it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from billsync.api.app import create_app
from billsync.bootstrap import Billsync
from billsync.runtime import GC_THRESHOLDS


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector")
def test_a_server_freezes_its_startup_heap_and_collects_young_objects_less_often(
    billsync: Billsync,
) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    app = create_app(billsync, owns_billsync=True)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 10_000  # the app, SQLAlchemy, the catalog ...
        assert gc.get_threshold() == GC_THRESHOLDS


@pytest.mark.usefixtures("collector")
def test_an_app_that_does_not_own_its_billsync_leaves_the_collector_alone(
    billsync: Billsync,
) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    with TestClient(create_app(billsync)) as client:
        assert client.get("/healthz").status_code == 200
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)
