"""Small helpers shared by the endpoint modules."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote, unquote_to_bytes

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Scope

from moorage.api.errors import API_VERSION_HEADER
from moorage.errors import (
    BlobUploadInvalid,
    PaginationInvalid,
    RangeInvalid,
    RangeNotSatisfiable,
    SizeInvalid,
)
from moorage.registry.uploads import ChunkRange

# ASCII digits only (`\d` and str.isdigit() also take other scripts' digits and '²'), and
# always fullmatch (`$` matches before a trailing newline).
_BYTE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")
_DIGITS = re.compile(r"[0-9]+")
#: Numbers saturate here: beyond any size, and far below int()'s 4,300-digit limit.
BEYOND = 10**18


def request_path(scope: Scope) -> str:
    """The path exactly as the client sent it, percent-decoded (bytes that are not UTF-8
    become U+FFFD, which no identifier grammar accepts).

    Not `request.url.path`: Starlette rebuilds it through urllib, which silently drops tabs
    and newlines, so `manifests/kee%0Ap` would act on tag `keep`.
    """
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return str(scope.get("path", ""))
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def authorization(request: Request) -> str | None:
    """The Authorization header, or None when it is not ASCII (no credentials then: Basic
    credentials are base64, and a byte above 0x7f must not reach the decoder)."""
    value = request.headers.get("authorization")
    return value if value is not None and value.isascii() else None


def decimal(raw: str) -> int | None:
    """A non-negative decimal of ASCII digits, or None if `raw` is not one. Values of more
    than 18 digits saturate at BEYOND (no size or count comes near it)."""
    if not _DIGITS.fullmatch(raw):
        return None
    significant = raw.lstrip("0")
    if len(significant) > 18:
        return BEYOND
    return int(significant or "0")


def reply(
    status: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    media_type: str | None = None,
) -> Response:
    all_headers = dict(API_VERSION_HEADER)
    if headers:
        all_headers.update(headers)
    return Response(body, status_code=status, headers=all_headers, media_type=media_type)


def content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    value = decimal(raw.strip())
    if value is None:
        raise SizeInvalid(f"invalid Content-Length {raw[:40]!r}")
    return value


def chunk_range(request: Request, current_size: int | None = None) -> ChunkRange | None:
    raw = request.headers.get("content-range")
    if raw is None:
        return None
    match = _CONTENT_RANGE.fullmatch(raw.strip())
    if not match:
        raise RangeInvalid(
            f"invalid Content-Range {raw[:60]!r}: expected start-end", current_size or 0
        )
    start, end = _digits(match.group(1)), _digits(match.group(2))
    if end < start:
        raise RangeInvalid(f"Content-Range {raw[:60]!r} ends before it starts", current_size or 0)
    return ChunkRange(start, end)


async def body_stream(request: Request) -> AsyncIterator[bytes]:
    """The request body; a body cut short (client gone, broken chunked encoding) raises
    BlobUploadInvalid, a 400 (the upload is rolled back to where the request found it)."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise BlobUploadInvalid(
            "the request body ended early (the client disconnected or sent a broken chunked "
            "encoding); nothing of it was kept, send the chunk again"
        ) from None


#: An error answered before the request's body was read: up to this much of the body is read
#: (and dropped) first, for at most DRAIN_SECONDS. A client still sending when the server
#: closes the connection gets a reset and never reads the answer (a probe's httpx saw a
#: ReadError instead of 416 or 404 for bodies of 1.2 MB and more).
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 10.0


async def drain_unread_body(request: Request) -> None:
    """Read and drop what is left of the request's body (an error is answered without it),
    so that the client reads the answer; not when the body is known to be over DRAIN_BYTES
    (the client then sees the connection close, as before)."""
    if not has_body(request) or getattr(request, "_stream_consumed", True):
        return
    if hasattr(request, "_body") or getattr(request, "_is_disconnected", False):
        return
    length = decimal(request.headers.get("content-length", "").strip())
    if length is not None and length > DRAIN_BYTES:
        return
    read = 0
    with contextlib.suppress(ClientDisconnect, TimeoutError, RuntimeError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in request.stream():
                read += len(chunk)
                if read > DRAIN_BYTES:
                    return


def has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def pagination(request: Request) -> tuple[int | None, str | None]:
    raw_n = request.query_params.get("n")
    n: int | None = None
    if raw_n is not None and raw_n != "":
        n = decimal(raw_n)
        if n is None:
            raise PaginationInvalid(f"n must be a non-negative integer, not {raw_n[:40]!r}")
    last = request.query_params.get("last") or None
    return n, last


def next_link(path: str, n: int | None, items: list[str], more: bool) -> dict[str, str]:
    """The next page's link; also without `n`, as such a listing is capped too."""
    if not more or not items:
        return {}
    size = "" if n is None else f"n={n}&"
    return {"Link": f'<{path}?{size}last={quote(items[-1], safe="")}>; rel="next"'}


def range_header(size: int) -> str:
    """The `Range` an upload reports: bytes 0..size-1 received (`0-0` when empty)."""
    return f"0-{max(size - 1, 0)}"


def _entity_tags(header: str) -> list[str]:
    """The entity tags a list header names, weak prefixes dropped (RFC 9110 §8.8.3)."""
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]


def not_modified(headers: Mapping[str, str], etag: str) -> bool:
    """Whether a GET or HEAD with these headers is answered 304: its `If-None-Match` is `*`
    or names `etag` (a content digest: the same ETag is the same bytes)."""
    raw = headers.get("if-none-match")
    if raw is None:
        return False
    tags = _entity_tags(raw)
    return "*" in tags or etag in tags


def range_applies(headers: Mapping[str, str], etag: str) -> bool:
    """Whether a `Range` is honoured: without `If-Range`, or when it names `etag` (a date
    or another tag there means "send it all", RFC 9110 §13.1.5)."""
    raw = headers.get("if-range")
    return raw is None or raw.strip() == etag


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) bytes a GET's `Range` asks for, or None to send it all.

    A single `bytes=` range is honoured (clamped to the blob); one that starts past the
    end, ends before it starts or asks for no bytes raises RangeNotSatisfiable. Anything
    else (other units, several ranges, garbage) is ignored, as RFC 9110 allows.
    """
    if header is None:
        return None
    match = _BYTE_RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        return None
    raw_first, raw_last = match.group(1), match.group(2)
    if raw_first == "":  # suffix: the last N bytes
        count = _digits(raw_last)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {header[:60]!r} selects no bytes", size)
        return max(size - count, 0), size - 1
    first = _digits(raw_first)
    last = _digits(raw_last) if raw_last else size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable(
            f"range {header[:60]!r} is not satisfiable: the blob has {size} bytes", size
        )
    return first, min(last, size - 1)


def _digits(raw: str) -> int:
    value = decimal(raw)
    assert value is not None  # only called on what a [0-9]+ group matched
    return value
