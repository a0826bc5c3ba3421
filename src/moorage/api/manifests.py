"""GET, HEAD, PUT and DELETE /v2/<name>/manifests/<reference>."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from moorage.api import auditing, webhooks
from moorage.api.http import decimal, not_modified, reply
from moorage.api.state import AppState
from moorage.errors import ManifestInvalid, ManifestTooLarge
from moorage.oci.manifest import MAX_MANIFEST_BYTES


async def get_manifest(request: Request, st: AppState, name: str, reference: str) -> Response:
    manifests = st.registry.manifests
    headers = {}
    if request.method == "HEAD":
        record = await manifests.resolve(name, reference)
        headers = {
            "Docker-Content-Digest": record.digest,
            "Content-Length": str(record.size),
            "Content-Type": record.media_type,
            "ETag": f'"{record.digest}"',
        }
        if not_modified(request.headers, headers["ETag"]):
            return reply(304, {k: v for k, v in headers.items() if k != "Content-Length"})
        return reply(200, headers)
    stored = await manifests.get(name, reference)
    if not_modified(request.headers, f'"{stored.digest}"'):
        # The client holds these bytes already: no body, and no pull to notify of.
        return reply(304, {"Docker-Content-Digest": stored.digest, "ETag": f'"{stored.digest}"'})
    tag = "" if ":" in reference else reference
    webhooks.notify_pull(request, st, name, stored.digest, stored.media_type, len(stored.body), tag)
    headers = {"Docker-Content-Digest": stored.digest, "ETag": f'"{stored.digest}"'}
    return reply(200, headers, stored.body, media_type=stored.media_type)


async def _read_limited(request: Request) -> bytes:
    declared = decimal(request.headers.get("content-length", "").strip())
    if declared is not None and declared > MAX_MANIFEST_BYTES:
        raise ManifestTooLarge(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_MANIFEST_BYTES:
                raise ManifestTooLarge(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    except ClientDisconnect:
        raise ManifestInvalid(
            "the manifest body ended early (the client disconnected or sent a broken chunked "
            "encoding); nothing was stored"
        ) from None
    return bytes(body)


async def put_manifest(request: Request, st: AppState, name: str, reference: str) -> Response:
    body = await _read_limited(request)
    tag_params = request.query_params.getlist("tag")
    pushed = await st.registry.manifests.put(
        name,
        reference,
        body,
        request.headers.get("content-type"),
        extra_tags=tag_params,
        notice=await webhooks.push_notice(request, st, name),
    )
    headers = {
        "Location": f"/v2/{name}/manifests/{pushed.digest}",
        "Docker-Content-Digest": str(pushed.digest),
        "Content-Length": "0",
    }
    if pushed.subject:
        headers["OCI-Subject"] = pushed.subject
    detail = {"digest": str(pushed.digest)}
    if tag_params:
        detail["tags"] = ",".join(dict.fromkeys(tag_params))
    await auditing.record(request, st, "push", _target(name, reference), detail)
    response = reply(201, headers)
    for tag in dict.fromkeys(tag_params):  # one OCI-Tag header per `?tag=` applied
        response.headers.append("OCI-Tag", tag)
    return response


async def delete_manifest(request: Request, st: AppState, name: str, reference: str) -> Response:
    kind = "manifest" if ":" in reference else "tag"
    if kind == "manifest":
        event = await webhooks.delete_event(request, st, name, digest=reference)
    else:
        event = await webhooks.delete_event(request, st, name, tag=reference)
    await st.registry.manifests.delete(name, reference, also=event)
    await auditing.record(request, st, "delete", _target(name, reference), {"kind": kind})
    return reply(202, {"Content-Length": "0"})


def _target(name: str, reference: str) -> str:
    """`repo@sha256:...` for a digest, `repo:tag` for a tag (a tag never holds a colon)."""
    return f"{name}@{reference}" if ":" in reference else f"{name}:{reference}"
