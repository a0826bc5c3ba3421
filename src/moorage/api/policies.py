"""The policies admin API (issue #10 items 2-5, DESIGN.md §8): immutable tags, retention,
quotas and sparse content per namespace or repository. Errors are `{"error", "code"}`
documents like the accounts API (api/accounts.py, whose `endpoint` wrapper this uses).

    GET  /api/v0/policies?n=&last=          -> {"policies": [...], "more", "last"}  (admin)
    GET  /api/v0/policies/show?on=TARGET    -> {"target", "policy", "namespace_policy",
                                                "usage": {"namespace", "bytes", "blobs", "quota"}}
    POST /api/v0/policies {on, immutable_tags?, keep_last?, keep_days?, keep_tags?, quota?,
                           allow_sparse?}   -> the policy (given settings replace, others stay)
    POST /api/v0/policies/unset {on, settings?: [immutable_tags|retention|quota|allow_sparse]}
    POST /api/v0/policies/apply {on?, dry_run?} -> {"dry_run", "deleted"|"would_delete",
                                                   "skipped"}

A cluster admin may call everything; an admin of a namespace may show, set, unset and apply
the policies of that namespace and its repositories, but for the quota: a limit set on a
namespace is the operator's, so only a cluster admin sets, changes or removes it (every user
administers its own namespace and would otherwise lift it). Setting a quota first counts the
namespace's blobs that are not counted yet (restored from a backup, or older than usage).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from moorage.api.account_input import Invalid, page_of, target_of
from moorage.api.accounts import (
    Handler,
    endpoint,
    is_admin,
    require_admin,
    require_namespace_admin,
)
from moorage.api.state import AppState
from moorage.audit import AuditEvent
from moorage.auth.access import Principal
from moorage.errors import Denied, RecordCorrupt
from moorage.meta import usage
from moorage.meta.policies import Policies
from moorage.meta.policy_records import SETTINGS, PolicyRecord, namespace_of, parse_size
from moorage.registry.retention import Retention

_QUOTA_ADMIN = "only a cluster admin may set, change or remove a quota"


def _policies(st: AppState) -> Policies:
    return st.registry.manifests.policies


async def _audit(
    request: Request, st: AppState, who: Principal, action: str, target: str, **detail: str
) -> None:
    client = request.client.host if request.client else None
    await st.audit.record(AuditEvent(action, who.name, target, client=client, detail=detail))


async def _usage_doc(st: AppState, target: str) -> dict[str, Any]:
    ns = namespace_of(target)
    used = await usage.current(st.registry.meta, ns)
    record = await _policies(st).get(ns)
    quota = record.quota if record is not None else None
    return {"namespace": ns, "bytes": used.bytes, "blobs": used.blobs, "quota": quota}


async def list_policies(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    await require_admin(who)
    n, last = page_of(request)
    records, more = await _policies(st).page(n, last)
    return {
        "policies": [r.doc() for r in records],
        "more": more,
        "last": records[-1].target if records else None,
    }


async def show_policy(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    target = target_of(request.query_params.get("on"))
    await require_namespace_admin(st, who, target)
    policies = _policies(st)
    record = await policies.get(target)
    ns_record = await policies.get(namespace_of(target)) if "/" in target else None
    return {
        "target": target,
        "policy": record.doc() if record is not None else None,
        "namespace_policy": ns_record.doc() if ns_record is not None else None,
        "usage": await _usage_doc(st, target),
    }


def _patterns(body: dict[str, Any], name: str) -> tuple[str, ...] | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Invalid(f"{name} must be a list of tag patterns")
    for pattern in value:
        if isinstance(pattern, str) and not _can_match(pattern):
            raise Invalid(
                f"{name}: pattern {pattern[:80]!r} can never match a tag: close every [ with ], "
                "and use ! only first in a [...] set"
            )
    return tuple(value)


def _can_match(pattern: str) -> bool:
    """Whether a glob can match some tag: each `[` is closed (`[]x]` and `[!x]` count) and
    `]` and `!` appear only in a set (a tag holds neither). Checked when a policy is set, not
    when a stored one is read back."""
    i = 0
    while i < len(pattern):
        if pattern[i] in "]!":
            return False
        if pattern[i] == "[":
            j = i + 1
            j += pattern[j : j + 1] == "!"
            j += pattern[j : j + 1] == "]"
            end = pattern.find("]", j)
            if end < 0:
                return False
            i = end
        i += 1
    return True


def _whole(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise Invalid(f"{name} must be a whole number")
    return value


async def set_policy(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    target = target_of(body["on"])
    await require_namespace_admin(st, who, target)
    policies = _policies(st)
    changes: dict[str, Any] = {}
    for name in ("immutable_tags", "keep_tags"):
        if (patterns := _patterns(body, name)) is not None:
            changes[name] = patterns
    for name in ("keep_last", "keep_days"):
        if (count := _whole(body, name)) is not None:
            changes[name] = count
    try:
        if body.get("quota") is not None:
            if not is_admin(who):
                raise Denied(_QUOTA_ADMIN)
            changes["quota"] = parse_size(body["quota"])
        if body.get("allow_sparse") is not None:
            if not isinstance(body["allow_sparse"], bool):
                raise Invalid("allow_sparse must be true or false")
            changes["allow_sparse"] = body["allow_sparse"]
        if not changes:
            raise Invalid(
                "give at least one setting: immutable_tags, keep_last, keep_days, keep_tags, "
                "quota, allow_sparse"
            )

        def changed(old: PolicyRecord | None) -> PolicyRecord:
            return dataclasses.replace(
                old or PolicyRecord(target),
                **changes,
                updated_at=round(time.time(), 3),
                updated_by=who.name,
            )

        current = await policies.get(target)
        changed(current)  # a setting the record refuses is refused before anything is written
    except RecordCorrupt as exc:
        raise Invalid(exc.message) from None
    if changes.get("quota") is not None or (current is not None and current.quota is not None):
        # Blobs linked before usage was kept (or restored) count before the quota applies.
        await usage.recount(st.registry.meta, namespace_of(target))
    try:  # at the revision read: a concurrent change of another setting is kept
        record = await policies.change(target, changed)
    except RecordCorrupt as exc:
        raise Invalid(exc.message) from None
    assert record is not None
    shown = {k: str(v) for k, v in sorted(changes.items())}
    await _audit(request, st, who, "policy.set", target, **shown)
    return {"policy": record.doc(), "usage": await _usage_doc(st, target)}


async def unset_policy(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    target = target_of(body["on"])
    await require_namespace_admin(st, who, target)
    names = body.get("settings") or list(SETTINGS)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise Invalid(f"settings must be a list of {', '.join(SETTINGS)}")
    policies = _policies(st)

    def removed(old: PolicyRecord | None) -> PolicyRecord | None:
        if old is None:
            return None
        if "quota" in names and old.quota is not None and not is_admin(who):
            raise Denied(f"{_QUOTA_ADMIN}; unset the other settings by name")
        return old.without(tuple(names))

    try:  # at the revision read: a concurrent change of another setting is kept
        record = await policies.change(target, removed)
    except RecordCorrupt as exc:
        raise Invalid(exc.message) from None
    if record is None:
        return {"target": target, "policy": None, "removed": []}
    await _audit(request, st, who, "policy.unset", target, settings=",".join(names))
    return {"target": target, "policy": None if record.empty else record.doc(), "removed": names}


async def apply_policy(request: Request, st: AppState, who: Principal, body: Any) -> Any:
    raw = body.get("on")
    target = target_of(raw) if raw is not None else None
    if target is None:
        await require_admin(who)
    else:
        await require_namespace_admin(st, who, target)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise Invalid("dry_run must be true or false")
    retention = Retention(st.registry.manifests, st.audit)
    if dry_run:
        doomed = await retention.plan(target)
        return {
            "dry_run": True,
            "would_delete": doomed.docs(),
            "would_delete_count": doomed.count,
            "skipped": [],
            "truncated": doomed.truncated,
        }
    client = request.client.host if request.client else None
    deleted, skipped = await retention.apply(target, actor=who.name, client=client)
    return {
        "dry_run": False,
        "deleted": deleted.docs(),
        "deleted_count": deleted.count,
        "skipped": skipped.docs(),
        "skipped_count": skipped.count,
        "truncated": deleted.truncated or skipped.truncated,
    }


def policy_routes() -> list[Route]:
    def post(path: str, handler: Handler) -> Route:
        return Route(path, endpoint(handler), methods=["POST"])

    def get(path: str, handler: Handler) -> Route:
        return Route(path, endpoint(handler), methods=["GET"])

    return [
        get("/api/v0/policies", list_policies),
        get("/api/v0/policies/show", show_policy),
        post("/api/v0/policies", set_policy),
        post("/api/v0/policies/unset", unset_policy),
        post("/api/v0/policies/apply", apply_policy),
    ]
