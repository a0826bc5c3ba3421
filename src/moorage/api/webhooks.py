"""`/api/v0/webhooks` (admin only), and what the registry handlers call to emit events.

- `POST /api/v0/webhooks` {"url", "events", "secret"?, "name"?}: add one (the secret is
  kept to sign deliveries and never shown back: `signed` says whether there is one).
- `GET /api/v0/webhooks`: every webhook, with the number of events queued for it.
- `DELETE /api/v0/webhooks/{id}`: remove it, its queue and its deliveries.
- `POST /api/v0/webhooks/{id}/test`: send a `test` event now; the delivery's outcome.
- `GET /api/v0/webhooks/deliveries[?webhook=ID]`: the last deliveries, newest first.

`push_notice` and `delete_event` (pushes and deletes) give the write that puts the event
in the webhook outbox, which the registry makes part of the push's or delete's own
transaction: both happen, or neither. `notify_pull` never waits on the store
(cluster/webhooks.py).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from moorage.api import auditing
from moorage.api.cluster import UnknownMember, admin
from moorage.api.state import AppState
from moorage.cluster.webhook_input import new_webhook
from moorage.cluster.webhooks import MAX_WEBHOOKS, RequestInfo, Webhooks
from moorage.meta.etcd import EtcdCluster
from moorage.meta.ops import Guard, Op
from moorage.meta.records import ManifestRecord
from moorage.meta.webhooks import WebhookRecord
from moorage.registry.manifests import Notice

_ID = re.compile(r"[0-9a-f]{12}")


class TooManyWebhooks(ValueError):
    pass


def request_info(request: Request) -> RequestInfo:
    client = request.client
    base = f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}"
    return RequestInfo(
        id=request.headers.get("x-request-id", "")[:100] or str(uuid.uuid4()),
        addr=f"{client.host}:{client.port}" if client else "",
        host=request.headers.get("host", "")[:300],
        method=request.method,
        useragent=request.headers.get("user-agent", "")[:300],
        actor=auditing.actor_of(request),
        base_url=base[:400],
    )


async def push_notice(request: Request, st: AppState, repository: str) -> Notice | None:
    """What a push writes for its event, in its own transaction (None: this worker has no
    webhooks): `notice_for` the request."""
    if st.webhooks is None:
        return None
    return notice_for(st.webhooks, repository, lambda: request_info(request))


def notice_for(
    webhooks: Webhooks, repository: str, info: RequestInfo | Callable[[], RequestInfo]
) -> Notice:
    """A push's event write and the guard that keeps the webhooks it went by current. No
    store read per push: the webhooks as last read, read afresh when the guard refused
    (cluster/webhooks.py `for_push`). `info` may be a function: called only when a webhook
    wants the event (building it costs a push more than the rest of this does)."""

    async def notice(
        record: ManifestRecord, tags: list[str], fresh: bool
    ) -> tuple[list[Guard], list[Op]]:
        guard, known = await webhooks.for_push(fresh)
        if not any("push" in h.events for h in known):
            return [guard], []
        tag = tags[0] if tags else ""
        about = info() if callable(info) else info
        event = webhooks.event(
            "push", repository, about, record.digest, record.media_type, record.size, tag
        )
        return [guard], [webhooks.outbox_op(event, known)]

    return notice


async def delete_event(
    request: Request, st: AppState, repository: str, digest: str = "", tag: str = ""
) -> list[Op]:
    """What a delete writes for its event, in its own transaction (nothing when no webhook
    wants deletes)."""
    webhooks = st.webhooks
    if webhooks is None or not await webhooks.wanted("delete"):
        return []
    event = webhooks.event("delete", repository, request_info(request), digest=digest, tag=tag)
    return [webhooks.outbox_op(event)]


async def notify_mount(
    request: Request, st: AppState, repository: str, digest: str, source: str | None
) -> None:
    """Queue a blob mount's event (Distribution's `mount`, `target.fromRepository`) once
    the blob is linked, before the answer (in the outbox, on its own transaction)."""
    webhooks = st.webhooks
    if webhooks is None or not await webhooks.wanted("mount"):
        return
    info = request_info(request)
    event = webhooks.event("mount", repository, info, digest=digest)
    event["target"]["url"] = f"{info.base_url}/v2/{repository}/blobs/{digest}"
    if source:
        event["target"]["fromRepository"] = source
    await webhooks.emit(event)


def notify_pull(
    request: Request, st: AppState, repository: str, digest: str, media_type: str, size: int,
    tag: str,
) -> None:  # fmt: skip
    """Queue a pull event in the background, only if a webhook wants pulls."""
    webhooks = st.webhooks
    if webhooks is None or not webhooks.wants("pull"):
        return
    info = request_info(request)
    webhooks.emit_later(webhooks.event("pull", repository, info, digest, media_type, size, tag))


def _hook_id(request: Request) -> str:
    hook_id = str(request.path_params["hook_id"])
    if not _ID.fullmatch(hook_id):
        raise UnknownMember(f"no webhook {hook_id[:40]!r}: 'moorage webhook list' shows the ids")
    return hook_id


async def hook_of(st: AppState, request: Request) -> WebhookRecord:
    assert st.webhooks is not None
    hook_id = _hook_id(request)
    hook = await st.webhooks.store.get(hook_id)
    if hook is None:
        raise UnknownMember(f"no webhook {hook_id}: 'moorage webhook list' shows the ids")
    return hook


def _webhooks(st: AppState) -> None:
    if st.webhooks is None:
        raise ValueError("this replica has no webhooks (no etcd cluster)")


async def add(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    _webhooks(st)
    assert st.webhooks is not None
    record = new_webhook(body, auditing.actor_of(request))
    if len(await st.webhooks.store.hooks()) >= MAX_WEBHOOKS:
        raise TooManyWebhooks(
            f"the cluster has {MAX_WEBHOOKS} webhooks already; remove one first "
            "('moorage webhook list', 'moorage webhook remove ID')"
        )
    if not await st.webhooks.store.add(record):
        raise ValueError("a webhook of that id exists; try again")
    detail = {"url": record.url, "events": ",".join(record.events)}
    await auditing.record(request, st, "webhook.add", f"webhook {record.id}", detail)
    return {"webhook": record.public()}


async def list_(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    _webhooks(st)
    assert st.webhooks is not None
    hooks = await st.webhooks.store.hooks()
    pending = await asyncio.gather(*(st.webhooks.store.pending(h.id) for h in hooks))
    return {"webhooks": [{**h.public(), "pending": n} for h, n in zip(hooks, pending, strict=True)]}


async def remove(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    _webhooks(st)
    assert st.webhooks is not None
    hook = await hook_of(st, request)
    await st.webhooks.store.remove(hook.id)
    await auditing.record(request, st, "webhook.remove", f"webhook {hook.id}", {"url": hook.url})
    return {"removed": hook.id, "url": hook.url}


async def test(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    _webhooks(st)
    assert st.webhooks is not None
    hook = await hook_of(st, request)
    delivery = await st.webhooks.test(hook, request_info(request))
    return {"delivery": delivery.to_json()}


async def deliveries(
    request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]
) -> Any:
    _webhooks(st)
    assert st.webhooks is not None
    wanted = request.query_params.get("webhook")
    if wanted:
        request.path_params["hook_id"] = wanted
        hooks = [await hook_of(st, request)]
    else:
        hooks = await st.webhooks.store.hooks()
    out = []
    for hook in hooks:
        out += [d.to_json() for d in await st.webhooks.store.deliveries(hook.id)]
    out.sort(key=lambda d: d["finished_at"], reverse=True)
    return {"deliveries": out}


def webhook_routes() -> list[Route]:
    return [
        Route("/api/v0/webhooks", admin(add), methods=["POST"]),
        Route("/api/v0/webhooks", admin(list_), methods=["GET"]),
        Route("/api/v0/webhooks/deliveries", admin(deliveries), methods=["GET"]),
        Route("/api/v0/webhooks/{hook_id}", admin(remove), methods=["DELETE"]),
        Route("/api/v0/webhooks/{hook_id}/test", admin(test), methods=["POST"]),
    ]
