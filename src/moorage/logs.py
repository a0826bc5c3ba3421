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

import itertools
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

#: Set by `configure`: the handler access lines are written to (the JSON format only), and
#: the replica they name.
_access: logging.StreamHandler[Any] | None = None
_replica: str | None = None
_ENCODER = json.JSONEncoder(default=str)  # ensure_ascii: no U+2028 a log shipper splits on


class _Ids:
    """New request ids: a random prefix of this process (made again in a forked API worker)
    and a counter, 24 hex digits; no system call per request, unique across processes."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(6)
        self.counter = itertools.count(secrets.randbelow(1 << 32))

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFF:012x}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reseed)


def request_id(sent: bytes | None) -> str:
    """The id of a request: the client's own `X-Request-Id` when it is short and safe
    (`[A-Za-z0-9._-]{1,64}`), else a new one (24 hex digits)."""
    if sent is not None and _SAFE_ID.fullmatch(sent):
        return sent.decode("ascii")
    return _ids.new()


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
    return _access is not None


def write_access(message: str, fields: dict[str, Any]) -> None:
    """An access line (JSON format only). The hot path: written straight to the handler's
    stream under its lock, without a LogRecord (whose caller lookup costs more than the
    line), in the same shape as `JsonFormatter`'s lines."""
    handler = _access
    if handler is None:
        return
    doc = {
        "time": _utc(time.time()),
        "level": "info",
        "replica": _replica,
        "logger": "moorage.access",
        "message": message,
        "request_id": current_request_id(),
        **fields,
    }
    line = _ENCODER.encode(doc) + "\n"
    handler.acquire()
    try:
        handler.stream.write(line)
        handler.stream.flush()
    except (OSError, ValueError):  # the log's pipe or file is gone: serve anyway
        pass
    finally:
        handler.release()


_second: tuple[int, str] = (-1, "")


class Repeating:
    """The log of a loop that retries every second or so while something is down (a watch
    during quorum loss): each reason is logged at once, then again only every `every`
    seconds while it repeats; `clear()` when it works again, so the next failure shows."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, every: float = 60.0):
        self.logger, self.level, self.every = logger, level, every
        self._last: str | None = None
        self._at = 0.0

    def __call__(self, message: str) -> bool:
        """Log `message` unless it was the last one, less than `every` seconds ago; True if
        it was logged."""
        now = time.monotonic()
        if message == self._last and now - self._at < self.every:
            return False
        self.logger.log(self.level, "%s", message)
        self._last, self._at = message, now
        return True

    def clear(self) -> None:
        self._last = None


def _utc(created: float) -> str:
    """RFC 3339 in UTC, milliseconds: 2026-12-01T16:02:11.532Z."""
    global _second
    seconds = int(created)
    if _second[0] != seconds:
        _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    millis = int((created - seconds) * 1000)
    return f"{_second[1]}.{millis:03d}Z"


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
        return _ENCODER.encode(doc)


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
    global _access, _replica
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
    # Access lines are what the JSON format is for: written whatever MOORAGE_LOG_LEVEL says.
    _access = handler if fmt == "json" else None
    _replica = replica
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
