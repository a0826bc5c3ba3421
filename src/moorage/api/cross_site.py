"""No request from another website changes anything (cross-site request forgery).

`/v2/` and `/api/v0/` authenticate with HTTP Basic, which browsers remember and send again
by themselves: once an admin has opened an API URL in a browser, any page on any other site
could make that browser send a form to `/api/v0/users` and create an admin. The web UI has
its own defence (a CSRF token and a SameSite=Strict cookie); everything else is guarded
here, for every method but GET, HEAD and OPTIONS:

- a `Sec-Fetch-Site` other than `same-origin` or `none` (a browser says where the request
  comes from) is refused, and so is an `Origin` (every browser sends one with a cross-origin
  POST) whose host and port are not the request's `Host`;
- on `/api/v0/`, a body typed as a form or plain text (the only types a page on another site
  can send without the CORS preflight, which Moorage never grants) is refused: the admin API
  takes JSON.

Registry clients, the CLI and scripts send none of these headers, so they are not affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import Scope

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME = frozenset({"same-origin", "none"})
#: The content types a cross-site form or no-cors fetch may send (no preflight).
_SIMPLE_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1").strip()
    return None


def refusal(scope: Scope, path: str) -> str | None:
    """Why this request looks forged by another website, or None."""
    if scope.get("method", "GET") in SAFE_METHODS or path.startswith("/ui/") or path == "/ui":
        return None
    site = _header(scope, b"sec-fetch-site")
    if site is not None and site.lower() not in _SAME:
        return f"a request from another website ({site}) cannot change anything here"
    origin = _header(scope, b"origin")
    if origin is not None:
        host = (_header(scope, b"host") or "").lower()
        try:
            origin_host = (urlsplit(origin).netloc or "").lower()
        except ValueError:
            origin_host = ""
        if not origin_host or origin_host != host:
            return f"a request from another origin ({origin[:100]}) cannot change anything here"
    if path.startswith("/api/v0/"):
        ctype = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        if ctype in _SIMPLE_TYPES:
            return f"the admin API takes JSON (Content-Type: application/json), not {ctype}"
    return None
