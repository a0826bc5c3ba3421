"""Blob uploads: POST, PATCH, PUT, GET (status) and DELETE (cancel).

One request at a time holds an upload session, on every replica. A PATCH, PUT or DELETE
that finds it held by another request answers 416 BLOB_UPLOAD_INVALID with the upload's
`Range` and `Location` (as a chunk out of order does, which clients already handle by
asking for the upload's status); once the other request finished or cancelled it, the
answer is 404 BLOB_UPLOAD_UNKNOWN. Clients never overlap requests on one session, so only
a broken or hostile client meets the 416.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from moorage.api import webhooks
from moorage.api.http import body_stream, chunk_range, content_length, has_body, range_header, reply
from moorage.api.state import AppState
from moorage.auth.access import PULL, REPOSITORY, Access
from moorage.errors import DigestInvalid, RangeInvalid, UploadBusy
from moorage.oci.names import validate_name
from moorage.registry.uploads import ChunkRange


def _upload_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Range": range_header(size),
        "Docker-Upload-UUID": upload_id,
        "Content-Length": "0",
    }


def _created(name: str, digest: str) -> Response:
    return reply(
        201,
        {
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
            "Content-Length": "0",
        },
    )


async def start_upload(request: Request, st: AppState, name: str) -> Response:
    uploads = st.registry.uploads
    mount = request.query_params.get("mount")
    if mount:
        source = request.query_params.get("from") or None  # `from=` empty: anonymous
        mounted = None
        if await _may_mount(request, st, source):
            principal = getattr(request.state, "principal", None)
            # Without `from`, only a cluster admin (who may pull everything) links any
            # blob in storage; anyone else only what the repository already holds.
            anywhere = principal is None or (principal.admin and principal.limit is None)
            mounted = await st.registry.blobs.mount(name, mount, source, anywhere=anywhere)
        if mounted is not None:
            await webhooks.notify_mount(request, st, name, str(mounted), source)
            return _created(name, str(mounted))
    digest = request.query_params.get("digest")
    if digest is not None:
        parsed, _size = await uploads.monolithic(
            name, digest, body_stream(request), content_length(request)
        )
        return _created(name, str(parsed))
    upload_id = await uploads.start(name)
    return reply(202, _upload_headers(name, upload_id, 0))


async def _may_mount(request: Request, st: AppState, source: str | None) -> bool:
    """Whether the caller may pull `source`: a mount from a repository it may not pull
    silently becomes an ordinary upload (a 202), as distribution does."""
    principal = getattr(request.state, "principal", None)
    if source is None or principal is None:
        return True
    validate_name(source)
    pull = Access(REPOSITORY, source, frozenset({PULL}))
    return PULL in await st.authorizer.allowed(principal, pull)


async def upload_status(request: Request, st: AppState, name: str, upload_id: str) -> Response:
    size = await st.registry.uploads.size(name, upload_id)
    return reply(204, _upload_headers(name, upload_id, size))


async def _chunk_range(
    request: Request, st: AppState, name: str, upload_id: str
) -> ChunkRange | None:
    """The request's Content-Range; a malformed one is refused saying so (not as a chunk out
    of order), with the upload's size as it stands."""
    try:
        return chunk_range(request)
    except RangeInvalid as exc:
        raise RangeInvalid(exc.message, await st.registry.uploads.size(name, upload_id)) from None


async def patch_upload(request: Request, st: AppState, name: str, upload_id: str) -> Response:
    uploads = st.registry.uploads
    wanted = await _chunk_range(request, st, name, upload_id)
    try:
        size = await uploads.append(
            name, upload_id, body_stream(request), wanted, content_length(request)
        )
    except UploadBusy:
        raise  # says why, with the size it found
    except RangeInvalid:
        current = await uploads.size(name, upload_id)
        raise RangeInvalid(
            f"chunk out of order: the upload has {current} bytes, send the chunk starting there",
            current,
        ) from None
    return reply(202, _upload_headers(name, upload_id, size))


async def finish_upload(request: Request, st: AppState, name: str, upload_id: str) -> Response:
    digest = request.query_params.get("digest")
    if not digest:
        raise DigestInvalid("the digest query parameter is required to finish an upload")
    uploads = st.registry.uploads
    body = body_stream(request) if has_body(request) else None
    wanted = await _chunk_range(request, st, name, upload_id)
    try:
        parsed, _size = await uploads.finish(
            name, upload_id, digest, body, wanted, content_length(request)
        )
    except UploadBusy:
        raise  # says why, with the size it found
    except RangeInvalid:
        current = await uploads.size(name, upload_id)
        raise RangeInvalid(
            f"chunk out of order: the upload has {current} bytes, send the chunk starting there",
            current,
        ) from None
    return _created(name, str(parsed))


async def cancel_upload(request: Request, st: AppState, name: str, upload_id: str) -> Response:
    await st.registry.uploads.cancel(name, upload_id)
    return reply(204, {"Content-Length": "0"})
