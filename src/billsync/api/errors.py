"""Renders every error as ``{"error": {"code", "message"}}`` with the right status."""

from __future__ import annotations

import logging
import sqlite3

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from billsync.api.responses import JSONBody
from billsync.core.text import NOT_UTF8, TOO_DEEP
from billsync.errors import BillsyncError

log = logging.getLogger("billsync.api")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONBody:
    return JSONBody(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _describe(error: dict[str, object]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")  # type: ignore[attr-defined]
    return f"{location or 'body'}: {error.get('msg')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BillsyncError)
    async def _billsync_error(_request: Request, error: BillsyncError) -> JSONBody:
        headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
        if error.status_code == 503:
            headers = {"Retry-After": "1"}
        return error_response(error.status_code, error.code, error.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError) -> JSONBody:
        problems = [_describe(item) for item in error.errors()]
        code = (
            "invalid_json"
            if any(item.get("type") == "json_invalid" for item in error.errors())
            else "invalid_request"
        )
        return error_response(422 if code == "invalid_request" else 400, code, "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONBody:
        unreadable = _unreadable_json(error)
        if unreadable is not None:
            return error_response(400, "invalid_json", f"the body is not valid JSON: {unreadable}")
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers = dict(error.headers) if error.headers else None
        if error.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        code = codes.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), headers)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)  # raised by the bulk paths' own cursors
    @app.exception_handler(sqlite3.OperationalError)
    async def _database_error(request: Request, error: Exception) -> JSONBody:
        """The database is unreachable or refused the transaction: it rolled back, nothing of
        the request was recorded, and the client should retry (idempotent ids make that safe).
        A programming error reaching the database is still a 500."""
        if isinstance(error, DBAPIError) and not _transient(error):
            return await _unexpected(request, error)
        log.warning(
            "api.database.unavailable",
            extra={"path": request.url.path, "error": type(error).__name__},
        )
        return error_response(
            503,
            "database_unavailable",
            "billsync's database is unavailable right now; nothing from this request was "
            "recorded: retry in a moment",
            {"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONBody:
        log.exception("api.error.unhandled", extra={"path": request.url.path})
        return error_response(
            500, "internal_error", "billsync failed to handle this request; it has been logged"
        )


def _unreadable_json(error: StarletteHTTPException) -> str | None:
    """Why FastAPI could not read a JSON body, when it is something the client can fix: it
    answers a body nested deeper than the interpreter's recursion limit, or not UTF-8, with a
    bare 400 "There was an error parsing the body" caused by the decoder's exception."""
    if error.status_code != 400:
        return None
    if isinstance(error.__cause__, RecursionError):
        return TOO_DEEP
    if isinstance(error.__cause__, UnicodeDecodeError):
        return NOT_UTF8
    return None


def _transient(error: DBAPIError) -> bool:
    """Lost connections, refused connections, lock waits and serialization failures."""
    return error.connection_invalidated or isinstance(error, OperationalError | InterfaceError)


def _allowed_methods(request: Request) -> str:
    """Every method some route of this path answers (a path can have one route per method)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(request.url.path):
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))
