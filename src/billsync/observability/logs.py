"""Log output: one JSON object per line for log collectors, or readable text for a terminal.

billsync logs event names (``sync.account.failed``) with their details in ``extra={...}``. Both
formats print the event, every extra field, the correlation ids in force (``request_id``,
``sync_id``, see :mod:`billsync.observability.context`) and the exception, if any. A JSON line::

    {"ts": "2026-11-15T12:00:00.123Z", "level": "warning", "logger": "billsync.sync",
     "message": "sync.account.failed", "account": "acme", "error": "...", "sync_id": "..."}

The same handler serves billsync's own loggers and uvicorn's (its access and error logs), in
every process: :func:`configure_logging` installs it, :func:`uvicorn_log_config` hands it to
uvicorn, whose worker processes configure their logging themselves.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any, Literal

import orjson

from billsync.observability.context import current_ids

LogFormat = Literal["json", "text"]

# Attributes every LogRecord has: whatever else a record carries came in through ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
_FIELDS = ("ts", "level", "logger", "message", "exception", "stack")
# Libraries whose INFO and DEBUG lines repeat what billsync logs itself, or say too much: the
# stripe SDK logs every request and, at DEBUG, the bodies (customer names and emails); billsync
# logs each Stripe request once (``stripe.request``). httpx logs every request of the simulator.
_QUIET_LIBRARIES = ("stripe", "httpx", "httpcore")
_INSTALLED = "_billsync_handler"


def resolve_format(setting: str, stream: IO[str] | None = None) -> LogFormat:
    """``auto``: text for a person at a terminal, JSON for everything else (a service manager,
    a container runtime, a pipe into a log collector)."""
    if setting == "json":
        return "json"
    if setting == "text":
        return "text"
    stream = stream or sys.stderr
    interactive = getattr(stream, "isatty", None)
    return "text" if interactive is not None and interactive() else "json"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``extra`` fields and correlation ids, for either format."""
    fields = {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }
    for key, value in current_ids().items():
        fields.setdefault(key, value)
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, _version, status = record.args
        fields.update(client=client, method=method, path=path, status=status)
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """What orjson cannot encode on its own: exact decimals as their text, the rest as str()."""
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            # An extra field named like a fixed one is kept, under another name.
            document[f"extra_{key}" if key in _FIELDS else key] = value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(document, default=_plain, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what orjson refuses outright (an int beyond 64 bits, ...)
            return json.dumps(document, default=_plain, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> <message> key=value ...``, then the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), f"{record.levelname:<7}", record.name, record.getMessage()]
        for key, value in _fields(record).items():
            text = str(value)
            parts.append(f"{key}={text if text and ' ' not in text else repr(text)}")
        line = " ".join(parts)
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


# Credentials never reach a log line, whoever wrote it (billsync, uvicorn's access log with the
# customer page's ``?token=``, a library's error): customer and API tokens, Stripe keys and
# webhook secrets, and any query parameter named like a credential.
_SECRETS = (
    (re.compile(r"(?i)([?&;](?:token|api_key|key|secret|password)=)[^&;\s\"'#]+"), r"\1[redacted]"),
    (re.compile(r"\b(bct|bsk)_[A-Za-z0-9_.~-]{8,}"), r"\1_[redacted]"),
    (re.compile(r"\b(sk|rk|pk)_(test|live)_[A-Za-z0-9]{8,}"), r"\1_\2_[redacted]"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{8,}"), "whsec_[redacted]"),
)


def redact(text: str) -> str:
    """``text`` with every credential it shows replaced by ``[redacted]``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class LogHandler(logging.Handler):
    """Writes each record as one line to ``stream``, or to whatever ``sys.stderr`` is at that
    moment (so that output redirected after start-up, as a test runner does, follows)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact(self.format(record))
            stream = self.stream or sys.stderr
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # logging must never take the process down
            self.handleError(record)


def build_handler(log_format: LogFormat = "json", stream: IO[str] | None = None) -> LogHandler:
    """A handler printing ``log_format`` (also the factory named in uvicorn's log config)."""
    handler = LogHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send every logger's records at ``level`` and above through billsync's handler on the
    root logger. Calling it again replaces billsync's handler; other handlers are left alone."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _INSTALLED, False):
            root.removeHandler(existing)
    handler = build_handler(log_format)
    setattr(handler, _INSTALLED, True)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def uvicorn_log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document for uvicorn: its loggers, and the root logger of
    each worker process it starts, all print through billsync's handler."""
    quiet = max(logging.WARNING, logging.getLevelName(level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "billsync": {
                "()": "billsync.observability.logs.build_handler",
                "log_format": log_format,
            }
        },
        "root": {"handlers": ["billsync"], "level": level},
        "loggers": {
            **{name: {"level": quiet} for name in _QUIET_LIBRARIES},
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": level, "propagate": True},
        },
    }
