"""POST /v1/usage: the ingest endpoint (the hot path: raw body, exact decoding, one transaction)."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from billsync.api.deps import BillsyncDep
from billsync.api.responses import JSONBody
from billsync.api.schemas import ErrorRead, UsageBatchCreate, UsageBatchRead
from billsync.core.usage import BatchShapeError
from billsync.errors import BillsyncError, InvalidRequest, PayloadTooLarge
from billsync.services.ingest import IngestReport

router = APIRouter(tags=["usage"])


def inline_schema(model: type[UsageBatchCreate]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` resolved in place (for ``openapi_extra``)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


class InvalidJSON(BillsyncError):
    status_code = 400
    code = "invalid_json"


def report_body(report: IngestReport) -> dict[str, Any]:
    return {
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": report.rejected,
        "results": [
            {
                "id": result.id,
                "status": result.status.value,
                "error": None
                if result.error is None
                else {"code": result.error.code.value, "message": result.error.message},
            }
            for result in report.results
        ],
    }


@router.post(
    "/usage",
    response_model=UsageBatchRead,
    responses={400: {"model": ErrorRead}, 413: {"model": ErrorRead}, 422: {"model": ErrorRead}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(UsageBatchCreate)}},
        }
    },
)
async def post_usage(request: Request, billsync: BillsyncDep) -> JSONBody:
    """Record a batch of usage events. Each event is accepted, a duplicate, or rejected with a
    code; all accepted events are committed together before the answer."""
    settings = billsync.settings
    body = await request.body()  # bounded by the ApiGuard
    try:
        report = await run_in_threadpool(
            billsync.ingest.ingest_body,
            body,
            settings.max_batch_events,
            billsync.ingest_writer.submit,
        )
    except msgspec.DecodeError as error:
        raise InvalidJSON(f"the body is not valid JSON: {error}") from None
    except BatchShapeError as error:
        if error.code == "batch_too_large":
            raise PayloadTooLarge(str(error), code=error.code) from None
        raise InvalidRequest(str(error), code=error.code) from None
    return JSONBody(report_body(report))
