"""The request id of every response, and the access line of every request.

`AccessLog` is the outermost ASGI middleware of a replica's app. For each HTTP request it

- takes the client's `X-Request-Id` when it is short and safe, or makes a new one
  (`moorage.logs.request_id`), and sends it back in the response's `X-Request-Id`;
- holds it (`moorage.logs.begin_request`) while the request is answered, so every line logged
  meanwhile and every OCI error envelope (`moorage.api.errors.envelope`) carries it;
- with `--log-format json`, logs one line when the response is complete: method, route (the
  template, `/v2/{name}/blobs/{digest}`: never the query string, which may carry a token, nor
  any header), repository (of a `/v2/` route), status, bytes (response body), bytes_in (the
  declared request length), latency_ms and user (the authenticated account, or null).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moorage import logs
from moorage.api.http import request_path
from moorage.api.v2 import route_template

HEADER = b"x-request-id"
#: Longest repository name an access line carries (a longer one is cut).
MAX_REPOSITORY = 256


class AccessLog:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self._templates: dict[Any, list[Route]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent_id = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = logs.request_id(sent_id)
        token = logs.begin_request(rid)
        header = (HEADER, rid.encode())
        status = 500
        sent = 0
        length_known = False
        head = scope["method"] == "HEAD"

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent, length_known
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                for name, value in headers:
                    if name.lower() == b"content-length" and value.isdigit():
                        length_known = True
                        sent = 0 if head else int(value)
                message = {**message, "headers": [*headers, header]}
            elif message["type"] == "http.response.body" and not length_known:
                sent += len(message.get("body", b""))
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if logs.access_enabled():
                self._log(scope, status, sent, time.perf_counter() - started)
            logs.end_request(token)

    def _log(self, scope: Scope, status: int, sent: int, elapsed: float) -> None:
        path = request_path(scope)
        repository = None
        if path == "/v2" or path.startswith("/v2/"):
            route, repository = route_template(path)
            if repository is not None:
                repository = repository[:MAX_REPOSITORY]
        else:
            route = self._starlette_route(scope, path)
        principal = scope.get("state", {}).get("principal")
        user = getattr(principal, "name", None) or None
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        method = scope["method"]
        logs.write_access(
            f"{method} {route} {status}",
            {
                "method": method,
                "route": route,
                "repository": repository,
                "status": status,
                "bytes": sent,
                "bytes_in": int(declared) if declared.isdigit() and len(declared) < 19 else None,
                "latency_ms": round(elapsed * 1000, 3),
                "user": user,
            },
        )

    def _starlette_route(self, scope: Scope, path: str) -> str:
        """The template of the Starlette route that answered (`/api/v0/users/{name}`), or
        `unmatched` when none did (a 404 of the router)."""
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unmatched"
        if self._templates is None:
            found: dict[Any, list[Route]] = {}
            for r in self.routes:
                if isinstance(r, Route):
                    found.setdefault(r.endpoint, []).append(r)
            self._templates = found
        candidates = self._templates.get(endpoint, [])
        for r in candidates:
            if len(candidates) == 1 or r.path_regex.match(path):
                return r.path
        return "unmatched"
