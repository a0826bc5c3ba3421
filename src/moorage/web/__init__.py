"""The web UI at `/ui/` (DESIGN.md §9): server-rendered pages for people, signed in with the
registry's accounts. `ui_routes()` is what the replica's HTTP app mounts."""

from __future__ import annotations

from moorage.web.routes import ui_routes

__all__ = ["ui_routes"]
