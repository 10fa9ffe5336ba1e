"""``billsync ingest FILE.jsonl``: stream a file through the same validation as the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from billsync.bootstrap import Billsync
from billsync.core.usage import decode_generic
from billsync.services.ingest import EventStatus

MAX_SHOWN = 20


@dataclass
class IngestSummary:
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    first_rejections: list[tuple[int, str, str]] = field(default_factory=list)

    def reject(
        self, line_number: int, code: str, message: str, raw: bytes, out: IO[bytes] | None
    ) -> None:
        self.rejected += 1
        if len(self.first_rejections) < MAX_SHOWN:
            self.first_rejections.append((line_number, code, message))
        if out is not None:
            out.write(
                orjson.dumps(
                    {"line": line_number, "error": {"code": code, "message": message},
                     "raw": raw.decode("utf-8", "replace")}
                ) + b"\n"
            )  # fmt: skip


def ingest_file(
    billsync: Billsync,
    path: Path,
    *,
    batch_size: int,
    rejects: Path | None,
    console: Console,
) -> IngestSummary:
    """Read the file line by line (never whole), ingest in batches, and tally the outcome."""
    summary = IngestSummary()
    source = path.open("rb")
    out = rejects.open("wb") if rejects else None
    batch: list[tuple[int, bytes, Any]] = []

    def flush() -> None:
        report = billsync.ingest.ingest([event for _, _, event in batch])
        for (line_number, raw, _), result in zip(batch, report.results, strict=True):
            if result.status is EventStatus.ACCEPTED:
                summary.accepted += 1
            elif result.status is EventStatus.DUPLICATE:
                summary.duplicates += 1
            else:
                assert result.error is not None
                summary.reject(line_number, result.error.code.value, result.error.message, raw, out)
        batch.clear()

    progress = Progress(
        TextColumn("[bold]ingesting"),
        BarColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    try:
        with progress, source:
            task = progress.add_task("ingest", total=path.stat().st_size)
            for line_number, raw_line in enumerate(source, start=1):
                progress.advance(task, len(raw_line))
                raw = raw_line.strip()
                if not raw:
                    continue
                summary.lines += 1
                try:
                    event = decode_generic(raw)
                except msgspec.DecodeError as error:
                    summary.reject(
                        line_number, "invalid_json", f"not valid JSON: {error}", raw, out
                    )
                    continue
                batch.append((line_number, raw, event))
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
    finally:
        if out is not None:
            out.close()
    return summary
