"""The Repositories pages: the searchable, paged list of what the viewer may pull; one
repository's tags; one manifest with its platforms and referrers; deleting a tag.

Every store read is paged: the list scans the catalog in pages of `SCAN` names, at most
`MAX_SCANS` pages a request (a search that finds little says where it stopped and offers to
go on); a repository's tags come `PAGE` at a time. A repository the viewer may not pull is
answered exactly like one that does not exist.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from moorage.api import auditing
from moorage.api.state import AppState
from moorage.auth.access import DELETE, PULL, REPOSITORY, Access
from moorage.errors import (
    Denied,
    DigestInvalid,
    ManifestUnknown,
    MoorageError,
    NameInvalid,
    NameUnknown,
)
from moorage.oci.names import is_valid_tag, validate_name
from moorage.web import common
from moorage.web.common import PREFIX, SECURITY_HEADERS, Viewer

PAGE = 50
SCAN = 500
MAX_SCANS = 20
MAX_QUERY = 200


@dataclass(frozen=True, slots=True)
class Listing:
    names: list[str]
    after: str | None  # where the next page starts (None: this was the last)
    scanned: int


async def pullable_page(st: AppState, viewer: Viewer, query: str, after: str | None) -> Listing:
    """Up to PAGE repository names after `after` that contain `query` and the viewer may
    pull, scanning at most MAX_SCANS catalog pages of SCAN names."""
    found: list[str] = []
    cursor, scanned = after, 0
    needle = query.lower()
    for _ in range(MAX_SCANS):
        page = await st.registry.discovery.catalog(SCAN, cursor)
        scanned += len(page.items)
        matching = [n for n in page.items if needle in n.lower()]
        allowed = await st.authorizer.pullable(viewer.principal, matching)
        for name in allowed:
            found.append(name)
            if len(found) == PAGE:
                more = page.more or name != page.items[-1]
                return Listing(found, name if more else None, scanned)
        if not page.more or not page.items:
            return Listing(found, None, scanned)
        cursor = page.items[-1]
    return Listing(found, cursor, scanned)


async def _actions(st: AppState, viewer: Viewer, name: str) -> frozenset[str]:
    access = Access(REPOSITORY, name, frozenset({PULL, DELETE}))
    return await st.authorizer.allowed(viewer.principal, access)


def _name(request: Request, fields: dict[str, str] | None = None) -> str:
    raw = (fields or {}).get("name") or request.query_params.get("name") or ""
    return validate_name(raw)  # NameInvalid for anything else


def _not_found(request: Request, viewer: Viewer, name: str) -> Response:
    message = f"no repository {name[:200]!r} that you may pull"
    return common.refusal(request, 404, message, viewer)


def pull_line(request: Request, name: str, reference: str) -> str:
    sep = "@" if ":" in reference else ":"
    return f"podman pull {request.url.netloc}/{name}{sep}{reference}"


async def repositories(request: Request, st: AppState, viewer: Viewer) -> Response:
    query = request.query_params.get("q", "")[:MAX_QUERY]
    after = request.query_params.get("after") or None
    listing = await pullable_page(st, viewer, query, after)
    return common.render(
        request, "repositories.html", viewer=viewer, page="repositories", q=query, listing=listing
    )


async def repository(request: Request, st: AppState, viewer: Viewer) -> Response:
    try:
        name = _name(request)
    except NameInvalid:
        return common.refusal(request, 400, "that is not a repository name", viewer)
    actions = await _actions(st, viewer, name)
    if PULL not in actions:
        return _not_found(request, viewer, name)
    after = request.query_params.get("after") or None
    try:
        page = await st.registry.discovery.tags(name, PAGE, after)
    except NameUnknown:
        return _not_found(request, viewer, name)
    rows = []
    for tag in page.items:
        try:
            record = await st.registry.manifests.resolve(name, tag)
        except ManifestUnknown:
            continue  # deleted meanwhile
        rows.append({"tag": tag, "record": record, "pull": pull_line(request, name, tag)})
    return common.render(
        request,
        "repository.html",
        viewer=viewer,
        page="repositories",
        name=name,
        rows=rows,
        next_after=page.items[-1] if page.more and page.items else None,
        can_delete=DELETE in actions and not st.read_only,
        deleted=request.query_params.get("deleted", "")[:128],
    )


def _platform(desc: dict[str, Any]) -> str:
    p = desc.get("platform")
    if not isinstance(p, dict):
        return "(no platform)"
    parts = [str(p.get("os", "?")), str(p.get("architecture", "?"))]
    if p.get("variant"):
        parts.append(str(p["variant"]))
    return "/".join(parts)


async def manifest(request: Request, st: AppState, viewer: Viewer) -> Response:
    try:
        name = _name(request)
    except NameInvalid:
        return common.refusal(request, 400, "that is not a repository name", viewer)
    if PULL not in await _actions(st, viewer, name):
        return _not_found(request, viewer, name)
    ref = request.query_params.get("ref", "")[:200]
    try:
        stored = await st.registry.manifests.get(name, ref)
        doc = json.loads(stored.body)
        referrers = await st.registry.discovery.referrers(name, stored.digest, None)
    except (ManifestUnknown, NameUnknown, DigestInvalid):
        message = f"no manifest {ref!r} in {name}"
        return common.refusal(request, 404, message, viewer)
    except ValueError:
        doc = {}
        referrers = []
    children = doc.get("manifests") if isinstance(doc, dict) else None
    platforms = [
        {"platform": _platform(c), "digest": c.get("digest"), "size": c.get("size")}
        for c in (children if isinstance(children, list) else [])
        if isinstance(c, dict)
    ]
    layers = doc.get("layers") if isinstance(doc, dict) else None
    return common.render(
        request,
        "manifest.html",
        viewer=viewer,
        page="repositories",
        name=name,
        ref=ref,
        stored=stored,
        platforms=platforms,
        layers=layers if isinstance(layers, list) else [],
        referrers=referrers,
        pull=pull_line(request, name, stored.digest),
    )


async def _delete_target(request: Request, st: AppState, viewer: Viewer) -> tuple[str, str]:
    """The repository and tag a delete names, once the viewer may delete there."""
    fields: dict[str, str] | None = getattr(request.state, "form", None)
    name = _name(request, fields)
    tag = (fields or {}).get("tag") or request.query_params.get("tag") or ""
    if not is_valid_tag(tag):
        raise ManifestUnknown(f"{tag[:140]!r} is not a tag")
    actions = await _actions(st, viewer, name)
    if PULL not in actions:
        raise NameUnknown(f"no repository {name} that you may pull")
    if DELETE not in actions:
        raise Denied(f"you may not delete tags in {name}; ask an admin of it for the admin role")
    return name, tag


async def delete_tag(request: Request, st: AppState, viewer: Viewer) -> Response:
    """GET: the confirmation; POST (with the session's CSRF token): the delete."""
    try:
        name, tag = await _delete_target(request, st, viewer)
        if request.method == "GET":
            await st.registry.manifests.resolve(name, tag)  # ManifestUnknown: no such tag
            return common.render(
                request, "delete.html", viewer=viewer, page="repositories", name=name, tag=tag
            )
        if st.read_only or st.write_refusal():
            return common.refusal(
                request, 503, "this replica is read-only now; delete on a healthy one", viewer
            )
        await st.registry.manifests.delete(name, tag)
    except NameInvalid:
        return common.refusal(request, 400, "that is not a repository name", viewer)
    except (NameUnknown, ManifestUnknown) as exc:
        return common.refusal(request, 404, str(exc), viewer)
    except Denied as exc:  # no delete role; an immutable tag
        return common.refusal(request, 403, str(exc), viewer)
    except MoorageError as exc:
        return common.refusal(request, 503, f"the tag was not deleted: {exc}", viewer)
    await auditing.record(request, st, "delete", f"{name}:{tag}", {"kind": "tag", "via": "ui"})
    target = f"{PREFIX}/repository?" + urllib.parse.urlencode({"name": name, "deleted": tag})
    return RedirectResponse(target, 303, SECURITY_HEADERS)
