"""Request dependencies: the wired application."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from billsync.bootstrap import Billsync


def get_billsync(request: Request) -> Billsync:
    billsync: Billsync = request.app.state.billsync
    return billsync


BillsyncDep = Annotated[Billsync, Depends(get_billsync)]
