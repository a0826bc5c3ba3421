"""The web UI's route table: every page, its methods, and the UI's own static files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from moorage.api.state import AppState
from moorage.web import (
    accounts_page,
    admin,
    cluster_page,
    lifecycle_page,
    repos_page,
    signin,
    tokens_page,
    webhooks_page,
)
from moorage.web.admin import ADMIN, admin_page
from moorage.web.common import PREFIX, SECURITY_HEADERS, Page, Viewer, page

#: The UI's own files (no CDN, no build step): name -> media type.
STATIC = {"ui.css": "text/css", "ui.js": "text/javascript"}


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    media = STATIC.get(name)
    if media is None:
        return JSONResponse({"error": "no such file", "code": "NOT_FOUND"}, 404)
    body = resources.files("moorage.web").joinpath("static", name).read_bytes()
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=300"}
    return Response(body, media_type=media, headers=headers)


async def to_root(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/", 308)


async def admin_index(request: Request, st: AppState, viewer: Viewer) -> Response:
    return admin.render(request, "admin/index.html", viewer)


#: The Administration pages (web/admin.py): path under /ui/admin, handler, methods.
ADMIN_PAGES: list[tuple[str, Page, list[str]]] = [
    ("", admin_index, ["GET"]),
    ("/users", accounts_page.users, ["GET"]),
    ("/users", accounts_page.add_user, ["POST"]),
    ("/users/passwd", accounts_page.reset_password, ["GET", "POST"]),
    ("/users/{action}", accounts_page.user_action, ["GET", "POST"]),
    ("/orgs", accounts_page.orgs, ["GET"]),
    ("/orgs", accounts_page.add_org, ["POST"]),
    ("/orgs/delete", accounts_page.delete_org, ["GET", "POST"]),
    ("/org", accounts_page.org, ["GET"]),
    ("/teams/{action}", accounts_page.team_action, ["GET", "POST"]),
    ("/grants", accounts_page.grants, ["GET"]),
    ("/grants", accounts_page.grant, ["POST"]),
    ("/grants/revoke", accounts_page.revoke, ["POST"]),
    ("/grants/public", accounts_page.set_public, ["POST"]),
    ("/storage", lifecycle_page.storage, ["GET"]),
    ("/gc", lifecycle_page.run_gc, ["POST"]),
    ("/backups", lifecycle_page.backups, ["GET"]),
    ("/webhooks", webhooks_page.webhooks, ["GET"]),
    ("/webhooks", webhooks_page.add, ["POST"]),
    ("/webhooks/remove", webhooks_page.remove, ["GET", "POST"]),
    ("/webhooks/test", webhooks_page.test, ["POST"]),
]


def _anyone(handler: Page) -> Callable[[Request], Awaitable[Response]]:
    return page(admin_page(handler, admin=False))


def ui_routes() -> list[BaseRoute]:
    return [
        Route(PREFIX, to_root, methods=["GET"]),
        Route(f"{PREFIX}/", page(signin.home), methods=["GET"]),
        Route(f"{PREFIX}/signin", signin.signin_form, methods=["GET"]),
        Route(f"{PREFIX}/signin", signin.signin, methods=["POST"]),
        Route(f"{PREFIX}/signout", page(signin.signout), methods=["POST"]),
        Route(f"{PREFIX}/cluster", page(cluster_page.cluster_page), methods=["GET"]),
        Route(
            f"{PREFIX}/cluster.json", page(cluster_page.cluster_json, json=True), methods=["GET"]
        ),
        Route(
            f"{PREFIX}/cluster.events",
            page(cluster_page.cluster_events, json=True),
            methods=["GET"],
        ),
        Route(f"{PREFIX}/repositories", page(repos_page.repositories), methods=["GET"]),
        Route(f"{PREFIX}/repository", page(repos_page.repository), methods=["GET"]),
        Route(f"{PREFIX}/manifest", page(repos_page.manifest), methods=["GET"]),
        Route(f"{PREFIX}/delete-tag", page(repos_page.delete_tag), methods=["GET", "POST"]),
        Route(
            f"{PREFIX}/delete-manifest", page(repos_page.delete_manifest), methods=["GET", "POST"]
        ),
        Route(f"{PREFIX}/static/{{name}}", static, methods=["GET"]),
        # access tokens: every user's own (admins: anybody's)
        Route(tokens_page.TOKENS, _anyone(tokens_page.tokens), methods=["GET"]),
        Route(tokens_page.TOKENS, _anyone(tokens_page.create), methods=["POST"]),
        Route(f"{tokens_page.TOKENS}/revoke", _anyone(tokens_page.revoke), methods=["POST"]),
        *(
            Route(ADMIN + path, page(admin_page(handler)), methods=methods)
            for path, handler, methods in ADMIN_PAGES
        ),
    ]
