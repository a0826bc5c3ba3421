"""Log lines of a replica's processes: `text` for people (as ever) or `json` for machines.

`configure` sets up the root logger of the replica process (`moorage run`); its API workers
fork from it and keep the set-up, and `granian_config` gives the HTTP server's own loggers
the same format. A JSON line is one object:

    {"time": "2026-12-01T16:02:11.532Z", "level": "info", "replica": "a1b2c3d4e5f6",
     "logger": "moorage.access", "message": "...", "request_id": "..."}

and an access line (one per HTTP request, JSON format only) adds method, route, repository,
status, bytes, bytes_in, latency_ms and user (`moorage.api.access_log`).

`current_request_id()` is the id of the request being answered (None outside one, between
`begin_request` and `end_request`): every line logged while answering it carries the id, and
so does every OCI error envelope.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from moorage.config import LOG_FORMATS as FORMATS

#: The request being answered, as a one-item list that `end_request` empties: an asyncio task
#: started during a request (a watch, a batcher) copies the context and so the list, and must
#: not name that request in its lines for ever after.
_REQUEST: ContextVar[list[str] | None] = ContextVar("moorage_request", default=None)

#: What a client may send as its own request id (longer or other characters: a new one).
_SAFE_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")

#: Set by `configure`: whether access lines are written (the JSON format only).
_access = False


def request_id(sent: bytes | None) -> str:
    """The id of a request: the client's own `X-Request-Id` when it is short and safe
    (`[A-Za-z0-9._-]{1,64}`), else a new random one (24 hex digits)."""
    if sent is not None and _SAFE_ID.fullmatch(sent):
        return sent.decode("ascii")
    return secrets.token_hex(12)


def begin_request(rid: str) -> Token[list[str] | None]:
    return _REQUEST.set([rid])


def end_request(token: Token[list[str] | None]) -> None:
    current = _REQUEST.get()
    if current is not None:
        current.clear()
    _REQUEST.reset(token)


def current_request_id() -> str | None:
    current = _REQUEST.get()
    return current[0] if current else None


def access_enabled() -> bool:
    return _access


def _utc(created: float) -> str:
    """RFC 3339 in UTC, milliseconds: 2026-12-01T16:02:11.532Z."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


#: The LogRecord attributes of every record: anything else was passed in `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, replica, logger, message, request_id (while a
    request is answered), the record's `extra` fields, and `error` (the traceback)."""

    def __init__(self, replica: str | None = None) -> None:
        super().__init__()
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "replica": self.replica,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = current_request_id()
        if rid is not None:
            doc["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["error"] = record.exc_text
        # ensure_ascii: no U+2028 or other line breaks a log shipper could split on
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """The text lines of before (`time LEVEL logger: message`), plus `request_id=…` on a
    line logged while a request is answered."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = current_request_id()
        return line if rid is None else f"{line} request_id={rid}"


def formatter(fmt: str, replica: str | None = None) -> logging.Formatter:
    return JsonFormatter(replica) if fmt == "json" else TextFormatter()


def configure(fmt: str = "text", replica: str | None = None) -> None:
    """The root logger of this process, on stderr (level MOORAGE_LOG_LEVEL, default INFO).
    With `json`, warnings and uncaught exceptions (of any thread) are JSON lines too."""
    global _access
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, replica))
    root.addHandler(handler)
    root.setLevel(os.environ.get("MOORAGE_LOG_LEVEL", "INFO").upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _access = fmt == "json"
    # Access lines are what the JSON format is for: written whatever MOORAGE_LOG_LEVEL says.
    logging.getLogger("moorage.access").setLevel(logging.INFO if _access else logging.NOTSET)
    if fmt == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught


def granian_config(fmt: str, replica: str | None) -> dict[str, Any] | None:
    """The HTTP server's logging (its `log_dictconfig`) in format `fmt`; None: its own."""
    if fmt != "json":
        return None
    json_formatter = {"()": f"{__name__}.JsonFormatter", "replica": replica}
    return {"formatters": {"generic": json_formatter, "access": json_formatter}}


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("moorage").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("moorage").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
