"""GET, HEAD and DELETE /v2/<name>/blobs/<digest>."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from moorage.api.errors import API_VERSION_HEADER
from moorage.api.http import reply
from moorage.api.state import AppState


async def get_blob(request: Request, st: AppState, name: str, digest: str) -> Response:
    parsed, size = await st.registry.blobs.stat(name, digest)
    headers = {**API_VERSION_HEADER, "Docker-Content-Digest": str(parsed), "ETag": f'"{parsed}"'}
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        headers["Accept-Ranges"] = "bytes"
        return Response(b"", headers=headers, media_type="application/octet-stream")
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
    return reply(202, {"Content-Length": "0"})
