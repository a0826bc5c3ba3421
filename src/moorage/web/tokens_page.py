"""Access tokens in the web UI (what `moorage token create|list|revoke` do): every signed-in
user lists, creates and revokes their own; a cluster admin also sees and revokes anybody's
(`?user=NAME`, or every token a page at a time with `?all=1`) and creates robot accounts'.

A new token's secret is shown once, in the answer to the POST that created it (never
stored in a form, a URL or a cookie; the page is not cached). Through the handlers of
api/access_tokens.py (see web/admin.py).
"""

from __future__ import annotations

import urllib.parse

from starlette.requests import Request
from starlette.responses import Response

from moorage.api import access_tokens as api
from moorage.api.state import AppState
from moorage.auth import access_tokens
from moorage.auth.access_tokens import Caller
from moorage.errors import Denied
from moorage.web import admin
from moorage.web.admin import field
from moorage.web.common import PREFIX, Viewer

TOKENS = f"{PREFIX}/tokens"


def _caller(viewer: Viewer) -> Caller:
    return Caller(viewer.principal.name, viewer.admin)


def _back(user: str) -> str:
    return TOKENS + (f"?{urllib.parse.urlencode({'user': user})}" if user else "")


async def tokens(request: Request, st: AppState, viewer: Viewer) -> Response:
    user = field(request, "user")
    everybody = not user and request.query_params.get("all") == "1"
    if everybody and not viewer.admin:
        raise Denied("only a cluster admin sees every token; yours are at /ui/tokens")
    if not everybody and not user:
        user = viewer.principal.name
    owner = None if everybody else user  # one owner's tokens come whole (at most 50)
    last = field(request, "last") or None
    doc = await access_tokens.listing(st.registry.meta, _caller(viewer), owner, last)
    return admin.render(
        request,
        "admin/tokens.html",
        viewer,
        page="tokens",
        user=None if everybody else user,
        own=user == viewer.principal.name,
        tokens=doc["tokens"],
        next_after=doc["next"],
    )


async def create(request: Request, st: AppState, viewer: Viewer) -> Response:
    scopes = field(request, "scopes", 4000).split()
    body: dict[str, object] = {"scopes": scopes, "expires": field(request, "expires") or None}
    robot = field(request, "robot")
    if robot:
        body["robot"] = robot
    doc = await api.create(request, st, _caller(viewer), body)
    return admin.render(request, "admin/token_created.html", viewer, page="tokens", token=doc)


async def revoke(request: Request, st: AppState, viewer: Viewer) -> Response:
    doc = await api.revoke(request, st, _caller(viewer), {"id": field(request, "id")})
    owner = str(doc["owner"])
    back = _back("" if owner == viewer.principal.name else owner)
    sep = "&" if "?" in back else "?"
    query = urllib.parse.urlencode({"done": "token.revoke", "target": doc["id"]})
    return admin.done(back + sep + query)
