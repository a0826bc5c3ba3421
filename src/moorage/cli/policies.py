"""`moorage policy set|show|list|unset|apply`: immutable tags, retention, quotas and sparse
content per namespace or repository (DESIGN.md §8, issue #10), through the admin API of
`--existing` (api/policies.py)."""

from __future__ import annotations

import datetime
import urllib.parse
from typing import Any

import click

from moorage.cli.accounts import _call, _pages
from moorage.cli.base import Failed, Group, emit
from moorage.cli.confirm import confirm, confirm_options
from moorage.cli.options import admin_client, admin_options, json_option
from moorage.errors import MoorageError, RecordCorrupt
from moorage.meta.policy_records import parse_size, show_size


@click.group("policy", cls=Group)
def policy() -> None:
    """Repository policies: immutable tags, retention, storage quotas, sparse manifests."""


def _retention(doc: dict[str, Any]) -> str | None:
    rules = []
    if doc.get("keep_last") is not None:
        rules.append(f"the last {doc['keep_last']} tags pushed")
    if doc.get("keep_days") is not None:
        rules.append(f"tags pushed within {doc['keep_days']} days")
    if doc.get("keep_tags"):
        rules.append("tags matching " + " ".join(doc["keep_tags"]))
    return "keep " + "; ".join(rules) if rules else None


def _policy_lines(doc: dict[str, Any] | None) -> list[str]:
    if doc is None:
        return ["  no policy"]
    lines = []
    if doc.get("immutable_tags"):
        lines.append("  immutable tags: " + " ".join(doc["immutable_tags"]))
    if (retention := _retention(doc)) is not None:
        lines.append(f"  retention: {retention}")
    if doc.get("quota") is not None:
        lines.append(f"  quota: {show_size(doc['quota'])} ({doc['quota']} bytes)")
    if doc.get("allow_sparse") is not None:
        allowed = "allowed" if doc["allow_sparse"] else "refused"
        lines.append(f"  sparse manifests: {allowed}")
    return lines


def _usage_line(usage: dict[str, Any]) -> str:
    quota = usage.get("quota")
    of = f" of {show_size(quota)} ({quota} bytes)" if quota is not None else " (no quota)"
    return (
        f"usage of namespace {usage['namespace']}: {show_size(usage['bytes'])} "
        f"({usage['bytes']} bytes) in {usage['blobs']} blobs{of}"
    )


@policy.command("set")
@admin_options
@click.argument("target", metavar="NAMESPACE[/REPO]")
@click.option(
    "--immutable-tags",
    multiple=True,
    metavar="PATTERN",
    help="Tags matching this glob (e.g. 'v*') can be pushed once and never moved or deleted. "
    "Repeat for several; replaces the target's list.",
)
@click.option("--keep-last", type=click.IntRange(0), help="Retention: keep the last N tags pushed.")
@click.option(
    "--keep-days", type=click.IntRange(0), help="Retention: keep tags pushed within D days."
)
@click.option(
    "--keep-tags",
    multiple=True,
    metavar="PATTERN",
    help="Retention: keep tags matching this glob. Repeat for several.",
)
@click.option(
    "--quota",
    metavar="SIZE",
    help="Storage quota of the namespace (e.g. 10GiB, 500MB): a push that would exceed it "
    "answers 403 DENIED.",
)
@click.option(
    "--allow-sparse/--no-allow-sparse",
    default=None,
    help="Accept manifests and indexes whose layers or child manifests are absent (off by "
    "default).",
)
@json_option
def policy_set(
    existing: str,
    username: str,
    password: str | None,
    target: str,
    immutable_tags: tuple[str, ...],
    keep_last: int | None,
    keep_days: int | None,
    keep_tags: tuple[str, ...],
    quota: str | None,
    allow_sparse: bool | None,
    as_json: bool,
) -> None:
    """Set the policy of NAMESPACE or NAMESPACE/REPO: the settings given replace the
    target's, the others stay (remove them with 'moorage policy unset')."""
    body: dict[str, Any] = {"on": target}
    if immutable_tags:
        body["immutable_tags"] = list(immutable_tags)
    if keep_last is not None:
        body["keep_last"] = keep_last
    if keep_days is not None:
        body["keep_days"] = keep_days
    if keep_tags:
        body["keep_tags"] = list(keep_tags)
    if quota is not None:
        try:
            body["quota"] = parse_size(quota)
        except RecordCorrupt as exc:
            raise click.BadParameter(exc.message, param_hint="--quota") from None
    if allow_sparse is not None:
        body["allow_sparse"] = allow_sparse
    if len(body) == 1:
        raise click.UsageError(
            "give at least one setting: --immutable-tags, --keep-last, --keep-days, "
            "--keep-tags, --quota, --allow-sparse/--no-allow-sparse"
        )
    doc = _call(existing, username, password, "POST", "/api/v0/policies", body)
    lines = [f"policy of {target} set", *_policy_lines(doc["policy"]), _usage_line(doc["usage"])]
    emit(as_json, doc, "\n".join(lines))


@policy.command("show")
@admin_options
@click.argument("target", metavar="NAMESPACE[/REPO]")
@json_option
def policy_show(
    existing: str, username: str, password: str | None, target: str, as_json: bool
) -> None:
    """The policy of NAMESPACE or NAMESPACE/REPO (and, for a repository, its namespace's),
    and the namespace's storage usage."""
    path = "/api/v0/policies/show?" + urllib.parse.urlencode({"on": target})
    doc = _call(existing, username, password, "GET", path)
    lines = [f"policy of {target}:", *_policy_lines(doc["policy"])]
    if "/" in target:
        ns = target.split("/", 1)[0]
        lines += [f"policy of namespace {ns}:", *_policy_lines(doc["namespace_policy"])]
    lines.append(_usage_line(doc["usage"]))
    emit(as_json, doc, "\n".join(lines))


@policy.command("list")
@admin_options
@json_option
def policy_list(existing: str, username: str, password: str | None, as_json: bool) -> None:
    """Every policy, one target per line."""
    docs = list(_pages(existing, username, password, "/api/v0/policies", "policies"))
    lines = []
    for doc in docs:
        parts = [line.strip() for line in _policy_lines(doc)]
        lines.append(f"{doc['target']}: " + "; ".join(parts))
    emit(as_json, {"policies": docs}, "\n".join(lines) or "no policies")


@policy.command("unset")
@admin_options
@click.argument("target", metavar="NAMESPACE[/REPO]")
@click.option("--immutable-tags", "immutable", is_flag=True, help="Remove the immutable tags.")
@click.option("--retention", is_flag=True, help="Remove keep-last, keep-days and keep-tags.")
@click.option("--quota", is_flag=True, help="Remove the quota.")
@click.option("--sparse", is_flag=True, help="Remove the sparse setting (back to refused).")
@json_option
def policy_unset(
    existing: str,
    username: str,
    password: str | None,
    target: str,
    immutable: bool,
    retention: bool,
    quota: bool,
    sparse: bool,
    as_json: bool,
) -> None:
    """Remove settings of the policy of NAMESPACE or NAMESPACE/REPO (all of them without a
    flag)."""
    flags = {
        "immutable_tags": immutable,
        "retention": retention,
        "quota": quota,
        "allow_sparse": sparse,
    }
    body: dict[str, Any] = {"on": target}
    if any(flags.values()):
        body["settings"] = [name for name, on in flags.items() if on]
    doc = _call(existing, username, password, "POST", "/api/v0/policies/unset", body)
    if doc["policy"] is None and not doc["removed"]:
        text = f"{target} has no policy: nothing to remove"
    else:
        text = f"policy of {target}: removed {', '.join(doc['removed'])}"
        text += "\n" + "\n".join(_policy_lines(doc["policy"]))
    emit(as_json, doc, text)


def _tag_line(doc: dict[str, Any]) -> str:
    at = doc.get("pushed_at")
    when = (
        datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if at is not None
        else "push time unknown"
    )
    return f"  {doc['repo']}:{doc['tag']}  {doc['digest']}  pushed {when}  (rule of {doc['rule']})"


#: Seconds `policy apply` waits for the replica to answer the real apply: one request that
#: deletes every doomed tag (about 150 to 200 a second), so far longer than other calls.
APPLY_TIMEOUT = 3600.0


def _apply(existing: str, username: str, password: str | None, body: dict[str, Any]) -> Any:
    """POST /api/v0/policies/apply. The plan (a dry run) only reads: asked again of the next
    replica on a failure. The apply is not: without an answer, the user is told how to see
    what it did instead of it starting again on another replica (recovery.client)."""
    again = "moorage policy apply" + (f" {body['on']}" if "on" in body else "")
    check = (
        "the apply may still be deleting tags there. Do not run it again yet; see what is "
        f"left to delete with '{again} --dry-run', and what it deleted with 'moorage audit "
        "--action retention.delete --since 1h'"
    )
    client = admin_client(existing, username, password)
    try:
        if body["dry_run"]:
            return client.call("POST", "/api/v0/policies/apply", body, idempotent=True)
        path = "/api/v0/policies/apply"
        return client.call("POST", path, body, read_timeout=APPLY_TIMEOUT, if_unknown=check)
    except MoorageError as exc:
        raise Failed(str(exc)) from None


@policy.command("apply")
@admin_options
@click.argument("target", metavar="[NAMESPACE[/REPO]]", required=False)
@confirm_options
@json_option
def policy_apply(
    existing: str,
    username: str,
    password: str | None,
    target: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Apply retention now (to TARGET, or wherever a rule is set): print the tags it would
    delete, ask, then delete them. The scheduled job does the same every hour."""
    body: dict[str, Any] = {"dry_run": True}
    if target is not None:
        body["on"] = target
    plan = _apply(existing, username, password, body)
    doomed = plan["would_delete"]
    count = _count(plan, "would_delete")
    text = (
        f"retention would delete {count} tag(s):\n"
        + "\n".join(_tag_line(d) for d in doomed)
        + _more(count, doomed)
        if doomed
        else "retention would delete no tag"
    )
    if not doomed and not dry_run:
        emit(as_json, {"dry_run": False, "deleted": [], "skipped": []}, text)
        return
    confirm("policy apply", text, plan, yes=yes, dry_run=dry_run, as_json=as_json)
    body["dry_run"] = False
    doc = _apply(existing, username, password, body)
    lines = [f"deleted {_count(doc, 'deleted')} tag(s)"]
    if doc["skipped"]:
        kept = _count(doc, "skipped")
        lines.append(f"kept {kept} tag(s) pushed again or made immutable since:")
        lines += [_tag_line(d) for d in doc["skipped"]]
        lines.append(_more(kept, doc["skipped"]).strip())
    emit(as_json, doc, "\n".join(line for line in lines if line))


def _count(doc: dict[str, Any], name: str) -> int:
    """An answer's count of `name` (a replica older than the counts: its list's length)."""
    count = doc.get(f"{name}_count")
    return count if isinstance(count, int) else len(doc[name])


def _more(count: int, listed: list[Any]) -> str:
    return f"\n  ... and {count - len(listed)} more" if count > len(listed) else ""


COMMANDS = [policy]
