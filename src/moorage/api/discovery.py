"""Tag lists, the catalog and the referrers API."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from moorage.api import cursors
from moorage.api.http import next_link, pagination, reply
from moorage.api.state import AppState
from moorage.auth.access import Principal
from moorage.errors import DigestInvalid, NameInvalid, PaginationInvalid
from moorage.oci import mediatypes as mt
from moorage.oci.digest import parse_digest
from moorage.oci.names import validate_name


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def list_tags(request: Request, st: AppState, name: str) -> Response:
    n, last = pagination(request)
    page = await st.registry.discovery.tags(name, n, last)
    headers = next_link(f"/v2/{name}/tags/list", n, page.items, page.more)
    return reply(200, headers, _json({"name": name, "tags": page.items}), "application/json")


async def catalog(request: Request, st: AppState) -> Response:
    n, last = pagination(request)
    # Only what the caller may pull, filtered page by page: a page may come out short (even
    # empty), and its Link continues after the last name read, shown or not: sealed when
    # not shown (moorage.api.cursors), so no link names a repository the caller cannot see.
    principal = getattr(request.state, "principal", None)
    # A `last` in clear is a name a page showed: one the caller may pull. Any other would
    # place the page anywhere, and whether a Link follows would tell how many hidden names
    # sort after it, enough to spell them out one letter at a time.
    if (
        principal is not None
        and last is not None
        and not last.startswith(cursors.MARK)
        and not (_is_name(last) and await st.authorizer.pullable(principal, [last]))
        and not await _sees_everything(st, principal)
    ):
        raise PaginationInvalid(
            "last must be a repository the previous page showed, or the Link's cursor"
        )
    page = await st.registry.discovery.catalog(n, cursors.opened(request, last))
    shown = page.items if principal is None else await st.authorizer.pullable(principal, page.items)
    following = page.items[-1:]
    if following and shown[-1:] != following:
        following = [cursors.seal(request, following[0])]
    headers = next_link("/v2/_catalog", n, following, page.more)
    return reply(200, headers, _json({"repositories": shown}), "application/json")


async def referrers(request: Request, st: AppState, name: str, digest: str) -> Response:
    artifact_type = request.query_params.get("artifactType") or None
    n, last = pagination(request)
    if last is not None and not _is_digest(last):
        raise PaginationInvalid(f"last must be a referrer's digest, not {last[:80]!r}")
    page = await st.registry.discovery.referrers(name, digest, artifact_type, n, last)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    if page.following is not None:  # the rest: same filter, same page size
        query = {"n": n, "last": page.following, "artifactType": artifact_type}
        args = urlencode({k: v for k, v in query.items() if v is not None})
        headers["Link"] = f'</v2/{name}/referrers/{digest}?{args}>; rel="next"'
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": page.descriptors}
    return reply(200, headers, _json(index), mt.OCI_INDEX)


async def _sees_everything(st: AppState, principal: Principal) -> bool:
    scope = await st.authorizer.pull_scope(principal)
    return scope is not None and scope.everything


def _is_name(value: str) -> bool:
    try:
        return validate_name(value) == value
    except NameInvalid:
        return False


def _is_digest(value: str) -> bool:
    try:
        return str(parse_digest(value)) == value
    except DigestInvalid:
        return False
