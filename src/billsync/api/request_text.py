"""Refuses, with one 400, a request whose path or query string carries a character no text in
billsync may hold (``core.text``), once percent-decoded: ``/v1/accounts/a%00b``,
``/console?q=a%00b``. Every route's path ids and query parameters are covered at once, on every
store alike: NUL would otherwise reach PostgreSQL (which refuses it: a 500) but not SQLite.

It sits behind the API guard, so a caller without a token still learns only that (401)."""

from __future__ import annotations

from urllib.parse import unquote_plus

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from billsync.core.text import unsafe_character, unsafe_message

CODE = "invalid_characters"


def unsafe_part(scope: Scope) -> str | None:
    """Why the request's path or query string is refused, or None."""
    path: str = scope["path"]  # percent-decoded by the server
    found = unsafe_character(path)
    if found is not None:
        return unsafe_message("the path", found)
    query: bytes = scope.get("query_string", b"")
    if query:
        # Decoded as Starlette decodes it for the routes (Latin-1 bytes, then UTF-8 escapes).
        found = unsafe_character(unquote_plus(query.decode("latin-1")))
        if found is not None:
            return unsafe_message("the query string", found)
    return None


class RefuseUnsafeText:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = unsafe_part(scope)
            if reason is not None:
                body = orjson.dumps({"error": {"code": CODE, "message": reason}})
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 400, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
