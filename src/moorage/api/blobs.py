"""GET, HEAD and DELETE /v2/<name>/blobs/<digest>."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from moorage.api import auditing
from moorage.api.errors import API_VERSION_HEADER
from moorage.api.http import byte_range, not_modified, range_applies, reply
from moorage.api.state import AppState
from moorage.errors import StorageUnavailable
from moorage.oci.digest import parse_digest


async def get_blob(request: Request, st: AppState, name: str, digest: str) -> Response:
    storage = st.registry.storage
    if storage.redirects:
        # Pulls by redirect (S3 `redirect=on`), as Distribution: GET and HEAD answer 307 to
        # a presigned URL once access control passed and the blob is linked to the
        # repository; the store answers for the bytes (ranges too, and 404 if they were
        # lost), so no HEAD of the object first.
        pull = request.method == "GET"
        parsed, _ = await st.registry.blobs.linked(name, digest, pull)
        if not st.storage.healthy and st.storage.checked_at:
            # The health loop's last probe of the store failed (it runs every 2 s): a URL
            # to a store that does not answer would only move the failure to the client.
            raise StorageUnavailable(
                f"blob storage is unavailable ({st.storage.error}); pulls by redirect "
                "resume once it answers: retry later"
            )
        return Response(
            b"",
            status_code=307,
            headers={
                **API_VERSION_HEADER,
                "Docker-Content-Digest": str(parsed),
                "Location": await storage.redirect_url(str(parsed), request.method),
                "Content-Length": "0",
            },
        )
    storage_path = storage.local_path(str(parse_digest(digest)))
    # A HEAD is how a push asks whether to upload: "no" while a collection deletes the blob.
    # A GET is a pull: served while the blob is linked and stored (MetaStore.blob_size).
    pull = request.method == "GET"
    if not pull or storage_path is not None:
        parsed, size = await st.registry.blobs.stat(name, digest, pull)
    else:
        # A store without local files (S3): the GET of the bytes is what says they are
        # there, before the answer starts; the size is the link's (etcd).
        parsed, size = await st.registry.blobs.linked(name, digest, pull)
    etag = f'"{parsed}"'
    headers = {**API_VERSION_HEADER, "Docker-Content-Digest": str(parsed), "ETag": etag}
    if not_modified(request.headers, etag):
        return Response(b"", status_code=304, headers=headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        headers["Accept-Ranges"] = "bytes"
        return Response(b"", headers=headers, media_type="application/octet-stream")
    if "range" in request.headers:
        honoured = range_applies(request.headers, etag)
        wanted = byte_range(request.headers["range"], size) if honoured else None
        first, last = wanted if wanted is not None else (0, size - 1)
        status = 206 if wanted is not None else 200
        headers["Content-Length"] = str(last - first + 1)
        headers["Accept-Ranges"] = "bytes"
        if wanted is not None:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        if storage_path is None:
            body = await st.registry.blobs.opened(parsed, size, first, last - first + 1)
        else:
            body = storage.read(str(parsed), first, last - first + 1)
        return StreamingResponse(
            body, status_code=status, headers=headers, media_type="application/octet-stream"
        )
    if storage_path is not None:
        return FileResponse(storage_path, headers=headers, media_type="application/octet-stream")
    headers["Content-Length"] = str(size)
    return StreamingResponse(
        await st.registry.blobs.opened(parsed, size),
        headers=headers,
        media_type="application/octet-stream",
    )


async def delete_blob(request: Request, st: AppState, name: str, digest: str) -> Response:
    await st.registry.blobs.delete(name, digest)
    await auditing.record(request, st, "delete", f"{name}@{digest}", {"kind": "blob"})
    return reply(202, {"Content-Length": "0"})
