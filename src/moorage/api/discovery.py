"""Tag lists, the catalog and the referrers API."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from moorage.api.http import next_link, pagination, reply
from moorage.api.state import AppState
from moorage.oci import mediatypes as mt


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def list_tags(request: Request, st: AppState, name: str) -> Response:
    n, last = pagination(request)
    page = await st.registry.discovery.tags(name, n, last)
    headers = next_link(f"/v2/{name}/tags/list", n, page.items, page.more)
    return reply(200, headers, _json({"name": name, "tags": page.items}), "application/json")


async def catalog(request: Request, st: AppState) -> Response:
    n, last = pagination(request)
    page = await st.registry.discovery.catalog(n, last)
    # Only what the caller may pull, filtered page by page: a page may come out short (even
    # empty), and its Link continues after the last name read, shown or not.
    principal = getattr(request.state, "principal", None)
    shown = page.items if principal is None else await st.authorizer.pullable(principal, page.items)
    headers = next_link("/v2/_catalog", n, page.items, page.more)
    return reply(200, headers, _json({"repositories": shown}), "application/json")


async def referrers(request: Request, st: AppState, name: str, digest: str) -> Response:
    artifact_type = request.query_params.get("artifactType") or None
    found = await st.registry.discovery.referrers(name, digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": found}
    return reply(200, headers, _json(index), mt.OCI_INDEX)
