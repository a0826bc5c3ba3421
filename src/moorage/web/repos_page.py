"""The Repositories pages: the searchable, paged list of what the viewer may pull; one
repository's tags; one manifest with its platforms and referrers; deleting a tag.

Every store read is paged: the list reads only the catalog ranges the viewer may pull
(web/catalog_view.py); a repository's tags come `PAGE` at a time. A repository the viewer
may not pull is answered exactly like one that does not exist.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from moorage.api import auditing, webhooks
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
from moorage.oci.digest import parse_digest
from moorage.oci.names import is_valid_tag, validate_name
from moorage.web import catalog_view, common
from moorage.web.common import PREFIX, SECURITY_HEADERS, Viewer

PAGE = catalog_view.PAGE
MAX_QUERY = catalog_view.MAX_QUERY
#: Referrers one manifest page lists; `?rafter=DIGEST` (the page's last referrer) shows the next.
UI_REFERRERS = 200


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
    contains = request.query_params.get("match") == "contains"
    listing = await catalog_view.page(st, viewer.principal, query, after, contains)
    return common.render(
        request,
        "repositories.html",
        viewer=viewer,
        page="repositories",
        q=query,
        match="contains" if contains else "prefix",
        listing=listing,
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
    actions = await _actions(st, viewer, name)
    if PULL not in actions:
        return _not_found(request, viewer, name)
    ref = request.query_params.get("ref", "")[:200]
    rafter = request.query_params.get("rafter") or None
    if rafter is not None:
        try:
            rafter = str(parse_digest(rafter))
        except DigestInvalid:
            message = f"rafter must be a referrer's digest, not {rafter[:80]!r}"
            return common.refusal(request, 400, message, viewer)
    referrers: list[dict[str, Any]] = []
    following: str | None = None
    try:
        stored = await st.registry.manifests.get(name, ref)
        found = await st.registry.discovery.referrers(
            name, stored.digest, None, UI_REFERRERS, rafter
        )
        referrers, following = found.descriptors, found.following
        doc = json.loads(stored.body)
    except (ManifestUnknown, NameUnknown, DigestInvalid):
        message = f"no manifest {ref!r} in {name}"
        return common.refusal(request, 404, message, viewer)
    except ValueError:
        doc = {}
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
        rafter=rafter,
        next_rafter=following,
        pull=pull_line(request, name, stored.digest),
        can_delete=DELETE in actions and not st.read_only,
    )


async def _delete_target(
    request: Request, st: AppState, viewer: Viewer, kind: str
) -> tuple[str, str]:
    """The repository and the tag or digest a delete names, once the viewer may delete
    there (`kind`: "tag" or "digest", the field that names it)."""
    fields: dict[str, str] | None = getattr(request.state, "form", None)
    name = _name(request, fields)
    ref = (fields or {}).get(kind) or request.query_params.get(kind) or ""
    if kind == "tag" and not is_valid_tag(ref):
        raise ManifestUnknown(f"{ref[:140]!r} is not a tag")
    if kind == "digest":
        try:
            ref = str(parse_digest(ref))
        except DigestInvalid as exc:
            raise ManifestUnknown(str(exc)) from exc
    actions = await _actions(st, viewer, name)
    if PULL not in actions:
        raise NameUnknown(f"no repository {name} that you may pull")
    if DELETE not in actions:
        what = "tags" if kind == "tag" else "manifests"
        raise Denied(f"you may not delete {what} in {name}; ask an admin of it for the admin role")
    return name, ref


async def delete_tag(request: Request, st: AppState, viewer: Viewer) -> Response:
    """GET: the confirmation; POST (with the session's CSRF token): the delete."""
    return await _delete(request, st, viewer, "tag")


async def delete_manifest(request: Request, st: AppState, viewer: Viewer) -> Response:
    """A manifest by digest, as `DELETE /v2/<name>/manifests/<digest>` does it: the tags
    that point to it go too (refused while one of them is immutable); the manifests that
    refer to it (signatures, SBOMs) stay. GET: the confirmation; POST: the delete."""
    return await _delete(request, st, viewer, "digest")


async def _delete(request: Request, st: AppState, viewer: Viewer, kind: str) -> Response:
    try:
        name, ref = await _delete_target(request, st, viewer, kind)
        if request.method == "GET":
            record = await st.registry.manifests.resolve(name, ref)  # ManifestUnknown: none
            return common.render(
                request,
                "delete.html",
                viewer=viewer,
                page="repositories",
                name=name,
                kind=kind,
                ref=ref,
                what=f"{'tag' if kind == 'tag' else 'manifest'} {ref}",
                record=record,
            )
        if st.read_only or st.write_refusal():
            return common.refusal(
                request, 503, "this replica is read-only now; delete on a healthy one", viewer
            )
        if kind == "tag":  # its webhook event, written in the delete's own transaction
            event = await webhooks.delete_event(request, st, name, tag=ref)
        else:
            event = await webhooks.delete_event(request, st, name, digest=ref)
        await st.registry.manifests.delete(name, ref, also=event)
    except NameInvalid:
        return common.refusal(request, 400, "that is not a repository name", viewer)
    except (NameUnknown, ManifestUnknown) as exc:
        return common.refusal(request, 404, str(exc), viewer)
    except Denied as exc:  # no delete role; an immutable tag
        return common.refusal(request, 403, str(exc), viewer)
    except MoorageError as exc:
        return common.refusal(request, 503, f"nothing was deleted: {exc}", viewer)
    if kind == "tag":
        await auditing.record(request, st, "delete", f"{name}:{ref}", {"kind": "tag", "via": "ui"})
    else:
        target = f"{name}@{ref}"
        await auditing.record(request, st, "delete", target, {"kind": "manifest", "via": "ui"})
    query = {"name": name, "deleted": ref}
    target = f"{PREFIX}/repository?" + urllib.parse.urlencode(query)
    return RedirectResponse(target, 303, SECURITY_HEADERS)
