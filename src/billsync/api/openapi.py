"""The OpenAPI document, made to say what the API really does (the fuzzing tests hold it to
that): the errors every route can answer, the currencies the catalog bills in, the period
parameter's two forms, the characters path ids and query values may not carry, the signature
header of the webhook receiver."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from billsync.api.schemas import ErrorRead
from billsync.bootstrap import Billsync
from billsync.core.text import SAFE_TEXT_PATTERN

ERROR = {"$ref": "#/components/schemas/ErrorRead"}
# Answered by the guard, the error handlers or the database for any /v1 route.
COMMON = {
    "400": "The body is not JSON (invalid_json), or the path or query string carries a control, "
    "line-separator or bidi-override character (invalid_characters).",
    "401": "No API token, or not a valid one (missing_token, invalid_token).",
    "403": "A customer token used outside its own account's billing routes (forbidden).",
    "413": "The body is larger than BILLSYNC_MAX_BODY_BYTES (body_too_large).",
    "422": "The request does not match the schema, or a value is not allowed.",
    "503": "The database is unavailable (database_unavailable): nothing was recorded; retry.",
}


def install(app: FastAPI, billsync: Billsync) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("ErrorRead", ErrorRead.model_json_schema(ref_template=_REF))
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                _common_errors(path, method, operation)
                _period_parameter(operation)
                _safe_text_parameters(operation)
        _currencies(schemas, billsync)
        _webhook(document)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


_REF = "#/components/schemas/{model}"


def _common_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    if not path.startswith("/v1/"):
        return
    responses = operation.setdefault("responses", {})
    for status, description in COMMON.items():
        if status == "413" and method not in ("post", "put", "patch"):
            continue
        responses.setdefault(
            status,
            {"description": description, "content": {"application/json": {"schema": ERROR}}},
        )


def _period_parameter(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if parameter.get("name") == "period" and parameter.get("in") == "query":
            parameter["schema"] = {
                "anyOf": [{"type": "string", "enum": ["current"]},
                          {"type": "string", "format": "date"}],
                "default": "current",
                "description": "'current' or a date (YYYY-MM-DD) inside the wanted period",
            }  # fmt: skip


def _safe_text_parameters(operation: dict[str, Any]) -> None:
    """A path id or query value with a character no text may carry is refused before routing
    (``api.request_text``): the document says so, for whoever generates requests from it."""
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if (
            parameter.get("in") in ("path", "query")
            and schema.get("type") == "string"
            and "pattern" not in schema
            and "enum" not in schema
        ):
            schema["pattern"] = SAFE_TEXT_PATTERN


def _currencies(schemas: dict[str, Any], billsync: Billsync) -> None:
    """Accounts are billed in a currency the catalog has prices in."""
    account = schemas.get("AccountCreate", {}).get("properties", {})
    if "currency" in account:
        account["currency"]["enum"] = sorted(billsync.catalog.currencies)


def _webhook(document: dict[str, Any]) -> None:
    operation = document.get("paths", {}).get("/v1/stripe/webhook", {}).get("post")
    if operation is None:
        return
    operation.setdefault("parameters", []).append(
        {
            "name": "Stripe-Signature",
            "in": "header",
            "required": True,
            "description": "t=…,v1=… signed with a BILLSYNC_STRIPE_WEBHOOK_SECRETS secret; "
            "anything else is answered 400 invalid_signature.",
            "schema": {"type": "string"},
        }
    )
    operation["security"] = []  # signed, not behind the API token
