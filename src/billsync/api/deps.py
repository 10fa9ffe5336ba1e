"""Request dependencies: the wired application and the API token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from billsync.bootstrap import Billsync
from billsync.errors import Unauthorized


def get_billsync(request: Request) -> Billsync:
    billsync: Billsync = request.app.state.billsync
    return billsync


BillsyncDep = Annotated[Billsync, Depends(get_billsync)]


def require_api_token(request: Request, billsync: BillsyncDep) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized(
            "send the API token as 'Authorization: Bearer <token>'", code="missing_token"
        )
    tokens = billsync.settings.api_tokens()
    # Compare against every configured token in constant time (rotation keeps two live).
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented.strip().encode(), token.encode())
    if not matched:
        raise Unauthorized("the API token is not valid", code="invalid_token")
