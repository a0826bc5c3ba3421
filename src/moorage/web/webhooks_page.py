"""Webhooks in the web UI (what `moorage webhook add|list|remove|test|deliveries` do): every
webhook with its queue and its last deliveries, adding one, removing one (after confirming),
sending it a test event. Through the handlers of api/webhooks.py (see web/admin.py); the
store keeps at most 50 deliveries per webhook and MAX_WEBHOOKS webhooks, so every read here
is bounded.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from moorage.api import webhooks as api
from moorage.api.state import AppState
from moorage.cluster.webhook_input import EVENTS
from moorage.meta.etcd import EtcdCluster
from moorage.web import admin
from moorage.web.admin import ADMIN, field
from moorage.web.common import Viewer

WEBHOOKS = f"{ADMIN}/webhooks"
SHOWN = 5  # deliveries per webhook on the list (a webhook's own page shows them all)


def _store(st: AppState) -> EtcdCluster:
    if st.cluster is None or st.webhooks is None:
        raise ValueError("this replica has no webhooks (no etcd cluster)")
    return st.cluster


def _hook_id(request: Request) -> str:
    """The webhook a form or link names, where the API's handlers look for it."""
    hook_id = field(request, "id", 40)
    request.path_params["hook_id"] = hook_id
    return hook_id


async def webhooks(request: Request, st: AppState, viewer: Viewer) -> Response:
    store = _store(st)
    hooks = (await api.list_(request, st, store, {}))["webhooks"]
    only = field(request, "webhook", 40)
    if only:
        request.path_params["hook_id"] = only
        hooks = [h for h in hooks if h["id"] == only]
        if not hooks:
            await api.hook_of(st, request)  # UnknownMember: the API's 404
    deliveries: dict[str, list[dict[str, Any]]] = {h["id"]: [] for h in hooks}
    for d in (await api.deliveries(request, st, store, {}))["deliveries"]:
        shown = deliveries.get(d["webhook"])
        if shown is not None and (only or len(shown) < SHOWN):
            shown.append(d)
    return admin.render(
        request,
        "admin/webhooks.html",
        viewer,
        hooks=hooks,
        deliveries=deliveries,
        only=only,
        events=EVENTS,
    )


async def add(request: Request, st: AppState, viewer: Viewer) -> Response:
    store = _store(st)
    fields = admin.form(request)
    body: dict[str, Any] = {
        "url": field(request, "url", 4000),
        "events": [e for e in EVENTS if fields.get(f"event-{e}") == "on"],
    }
    for name in ("secret", "name"):
        if value := field(request, name, 1000):
            body[name] = value
    doc = await api.add(request, st, store, body)
    hook = doc["webhook"]
    return admin.done(WEBHOOKS, done="webhook.add", target=f"{hook['id']} ({hook['url']})")


async def remove(request: Request, st: AppState, viewer: Viewer) -> Response:
    store = _store(st)
    hook_id = _hook_id(request)
    if request.method == "GET":
        hook = await api.hook_of(st, request)
        return admin.confirm(
            request,
            viewer,
            title=f"Remove webhook {hook.id}?",
            explain=f"Events stop going to {hook.url}; its queue and its deliveries are "
            "deleted. This cannot be undone.",
            action=f"{WEBHOOKS}/remove",
            fields={"id": hook.id},
            button=f"Remove webhook {hook.id}",
            cancel=WEBHOOKS,
        )
    doc = await api.remove(request, st, store, {})
    return admin.done(WEBHOOKS, done="webhook.remove", target=f"{hook_id} ({doc['url']})")


async def test(request: Request, st: AppState, viewer: Viewer) -> Response:
    store = _store(st)
    hook_id = _hook_id(request)
    d = (await api.test(request, st, store, {}))["delivery"]
    code = d["status_code"] if d["status_code"] is not None else "none"
    outcome = f"{hook_id}: {d['status']}, HTTP status {code}"
    if d["error"]:
        outcome += f" ({d['error']})"
    return admin.done(WEBHOOKS, webhook=hook_id, done="webhook.test", target=outcome)
