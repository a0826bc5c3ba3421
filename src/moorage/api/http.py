"""Small helpers shared by the endpoint modules."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from moorage.api.errors import API_VERSION_HEADER
from moorage.errors import PaginationInvalid, RangeInvalid, RangeNotSatisfiable, SizeInvalid
from moorage.registry.uploads import ChunkRange

_BYTE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


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
    if not raw.isdigit():
        raise SizeInvalid(f"invalid Content-Length {raw[:40]!r}")
    return int(raw)


def chunk_range(request: Request, current_size: int | None = None) -> ChunkRange | None:
    raw = request.headers.get("content-range")
    if raw is None:
        return None
    match = _CONTENT_RANGE.match(raw.strip())
    if not match:
        raise RangeInvalid(
            f"invalid Content-Range {raw[:60]!r}: expected start-end", current_size or 0
        )
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RangeInvalid(f"Content-Range {raw!r} ends before it starts", current_size or 0)
    return ChunkRange(start, end)


async def body_stream(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


def has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def pagination(request: Request) -> tuple[int | None, str | None]:
    raw_n = request.query_params.get("n")
    n: int | None = None
    if raw_n is not None and raw_n != "":
        if not raw_n.isdigit():
            raise PaginationInvalid(f"n must be a non-negative integer, not {raw_n[:40]!r}")
        n = int(raw_n)
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


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) bytes a GET's `Range` asks for, or None to send it all.

    A single `bytes=` range is honoured (clamped to the blob); one that starts past the
    end, ends before it starts or asks for no bytes raises RangeNotSatisfiable. Anything
    else (other units, several ranges, garbage) is ignored, as RFC 9110 allows.
    """
    if header is None:
        return None
    match = _BYTE_RANGE.match(header.strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        return None
    raw_first, raw_last = match.group(1), match.group(2)
    if raw_first == "":  # suffix: the last N bytes
        count = int(raw_last)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {header[:60]!r} selects no bytes", size)
        return max(size - count, 0), size - 1
    first = int(raw_first)
    last = int(raw_last) if raw_last else size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable(
            f"range {header[:60]!r} is not satisfiable: the blob has {size} bytes", size
        )
    return first, min(last, size - 1)
