"""Domain errors to OCI error codes: the one place where that mapping lives."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from moorage import errors as e
from moorage.logs import current_request_id

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}

# error class -> (HTTP status, OCI code)
_TABLE: dict[type[e.MoorageError], tuple[int, str]] = {
    e.NameInvalid: (400, "NAME_INVALID"),
    e.NameUnknown: (404, "NAME_UNKNOWN"),
    e.DigestInvalid: (400, "DIGEST_INVALID"),
    e.Unsupported: (405, "UNSUPPORTED"),
    e.BlobUnknown: (404, "BLOB_UNKNOWN"),
    e.BlobUploadUnknown: (404, "BLOB_UPLOAD_UNKNOWN"),
    e.BlobUploadInvalid: (400, "BLOB_UPLOAD_INVALID"),
    e.RangeInvalid: (416, "BLOB_UPLOAD_INVALID"),
    e.RangeNotSatisfiable: (416, "RANGE_INVALID"),
    e.SizeInvalid: (400, "SIZE_INVALID"),
    e.ManifestInvalid: (400, "MANIFEST_INVALID"),
    e.ManifestTooLarge: (413, "SIZE_INVALID"),
    e.ManifestUnknown: (404, "MANIFEST_UNKNOWN"),
    e.ManifestBlobUnknown: (400, "MANIFEST_BLOB_UNKNOWN"),
    e.PaginationInvalid: (400, "PAGINATION_NUMBER_INVALID"),
    e.Unauthorized: (401, "UNAUTHORIZED"),
    e.JoinTokenRefused: (401, "UNAUTHORIZED"),
    e.Denied: (403, "DENIED"),
    e.StoreReadOnly: (503, "UNAVAILABLE"),
    e.StoreUnavailable: (503, "UNAVAILABLE"),
    e.StorageUnavailable: (503, "UNAVAILABLE"),
    e.LoginThrottled: (429, "TOOMANYREQUESTS"),
    e.RecordCorrupt: (503, "UNAVAILABLE"),
    e.BlobCollecting: (503, "UNAVAILABLE"),
}


def admin_error(code: str, message: str) -> dict[str, Any]:
    """The admin API's (`/api/v0/...`) error document: `{"error", "code", "request_id"}`,
    the id of the request being answered (as the OCI envelope's `detail.request_id`)."""
    doc: dict[str, Any] = {"error": message, "code": code}
    rid = current_request_id()
    if rid is not None:
        doc["request_id"] = rid
    return doc


def envelope(code: str, message: str, detail: Any = None) -> bytes:
    """The OCI error document. While a request is answered, its id is in `detail`
    (`{"request_id": ...}`, merged into a dict detail; another detail is kept under
    `detail.value`), so an operator can find the request's log lines."""
    rid = current_request_id()
    if rid is not None:
        if detail is None:
            detail = {"request_id": rid}
        elif isinstance(detail, dict):
            detail = {**detail, "request_id": rid}
        else:
            detail = {"value": detail, "request_id": rid}
    return json.dumps(
        {"errors": [{"code": code, "message": message, "detail": detail}]},
        separators=(",", ":"),
    ).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    all_headers = dict(API_VERSION_HEADER)
    if headers:
        all_headers.update(headers)
    return Response(
        envelope(code, message, detail),
        status_code=status,
        media_type="application/json",
        headers=all_headers,
    )


def from_domain(exc: e.MoorageError, headers: dict[str, str] | None = None) -> Response:
    for cls in type(exc).__mro__:
        mapped = _TABLE.get(cls)
        if mapped is not None:
            status, code = mapped
            break
    else:
        status, code = 500, "UNKNOWN"
    extra = dict(headers or {})
    if isinstance(exc, e.RangeNotSatisfiable):
        extra.setdefault("Content-Range", f"bytes */{exc.size}")
    if isinstance(exc, e.StoreUnavailable | e.StorageUnavailable | e.BlobCollecting):
        extra.setdefault("Retry-After", "5")
    if isinstance(exc, e.LoginThrottled):
        extra.setdefault("Retry-After", str(exc.retry_after))
    return error_response(status, code, exc.message, exc.detail, extra)
