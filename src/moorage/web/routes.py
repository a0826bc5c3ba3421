"""The web UI's route table: every page, its methods, and the UI's own static files."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from moorage.web import cluster_page, repos_page, signin
from moorage.web.common import PREFIX, SECURITY_HEADERS, page

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
    ]
