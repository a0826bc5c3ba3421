"""GET, HEAD and DELETE /v2/<name>/blobs/<digest>."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from moorage.api import auditing
from moorage.api.errors import API_VERSION_HEADER
from moorage.api.http import byte_range, reply
from moorage.api.state import AppState


async def get_blob(request: Request, st: AppState, name: str, digest: str) -> Response:
    parsed, size = await st.registry.blobs.stat(name, digest)
    headers = {**API_VERSION_HEADER, "Docker-Content-Digest": str(parsed), "ETag": f'"{parsed}"'}
    # Pulls by redirect (S3 `redirect=on`), as Distribution: GET and HEAD answer 307 to a
    # presigned URL, after access control and the repository's link were checked; the
    # store serves ranges itself.
    location = await st.registry.storage.redirect_url(str(parsed), request.method)
    if location is not None:
        headers["Location"] = location
        headers["Content-Length"] = "0"
        return Response(b"", status_code=307, headers=headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        headers["Accept-Ranges"] = "bytes"
        return Response(b"", headers=headers, media_type="application/octet-stream")
    if "range" in request.headers:
        wanted = byte_range(request.headers["range"], size)
        first, last = wanted if wanted is not None else (0, size - 1)
        status = 206 if wanted is not None else 200
        headers["Content-Length"] = str(last - first + 1)
        headers["Accept-Ranges"] = "bytes"
        if wanted is not None:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return StreamingResponse(
            st.registry.storage.read(str(parsed), first, last - first + 1),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )
    path = st.registry.storage.local_path(str(parsed))
    if path is not None:
        return FileResponse(path, headers=headers, media_type="application/octet-stream")
    headers["Content-Length"] = str(size)
    return StreamingResponse(
        st.registry.storage.read(str(parsed)),
        headers=headers,
        media_type="application/octet-stream",
    )


async def delete_blob(request: Request, st: AppState, name: str, digest: str) -> Response:
    await st.registry.blobs.delete(name, digest)
    await auditing.record(request, st, "delete", f"{name}@{digest}", {"kind": "blob"})
    return reply(202, {"Content-Length": "0"})
