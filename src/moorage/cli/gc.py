"""`moorage gc`: online garbage collection through the admin API (`/api/v0/gc`).

It starts a collection on a replica, shows its progress on a terminal (stderr) while it
runs, then prints the result: what was freed (or, with `--dry-run`, what would be) per
repository. `--status` shows the running collection, the last result and the schedule;
`--schedule 24h` makes the cluster collect every 24 hours (`--schedule off` stops it).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from moorage.cli.base import Failed, emit
from moorage.cli.options import admin_client, admin_options, json_option
from moorage.errors import MoorageError
from moorage.meta.policy_records import show_size

#: The name a blob no repository links is reported under.
UNLINKED_LABEL = "(no repository)"
_POLL = 0.5


def result_text(doc: dict[str, Any]) -> str:
    dry = bool(doc.get("dry_run"))
    verb = "would free" if dry else "freed"
    lines = [
        f"{verb} {doc.get('blobs', 0)} blob(s), {show_size(int(doc.get('bytes', 0)))}"
        + (
            f"; {'would delete' if dry else 'deleted'} {doc.get('manifests', 0)} untagged "
            "manifest(s)"
            if doc.get("untagged")
            else ""
        )
        + f" (grace {doc.get('grace', 0):g} s{', dry run' if dry else ''};"
        f" {float(doc.get('duration', 0)):.1f} s)"
    ]
    repos = doc.get("repositories") or {}
    if repos:
        width = max(len(UNLINKED_LABEL), *(len(r) for r in repos))
        lines.append(f"{'REPOSITORY':<{width}}  {'BLOBS':>7}  {'BYTES':>10}  {'MANIFESTS':>9}")
        for repo, u in repos.items():
            name = repo or UNLINKED_LABEL
            size = show_size(int(u.get("bytes", 0)))
            lines.append(
                f"{name:<{width}}  {u.get('blobs', 0):>7}  {size:>10}  {u.get('manifests', 0):>9}"
            )
    if doc.get("repositories_truncated"):
        more = int(doc.get("repository_count") or 0) - len(repos)
        lines.append(f"... and {more} more repositories (those that free the most are listed)")
    if doc.get("rescued"):
        lines.append(f"{doc['rescued']} candidate(s) were kept: a push needed them meanwhile")
    if dry:
        lines.append("nothing was deleted; run without --dry-run to delete")
    return "\n".join(lines)


def _progress_line(doc: dict[str, Any]) -> str:
    counts = doc.get("counts") or {}
    parts = " ".join(f"{k}={v}" for k, v in counts.items())
    return f"gc {doc.get('run', '')}: {doc.get('phase', '')} {parts}".rstrip()


def _wait(client: Any, run: str, show: bool) -> dict[str, Any]:
    """Poll until the run's result is the last one; its result document."""
    shown = ""
    try:
        while True:
            doc = client.call("GET", "/api/v0/gc")
            last = doc.get("last") or {}
            if last.get("run") == run:
                return dict(last)
            running = doc.get("running") or {}
            if show and running.get("run") == run:
                line = _progress_line(running)
                if line != shown:
                    click.echo(f"\r\033[K{line}", nl=False, err=True)
                    shown = line
            elif not running:  # the lock is gone and no result: its replica stopped
                raise Failed(
                    f"garbage collection {run} stopped without a result (its replica "
                    "stopped?); nothing is left half-done: run 'moorage gc' again"
                )
            time.sleep(_POLL)
    finally:
        if shown:
            click.echo("\r\033[K", nl=False, err=True)


@click.command("gc")
@admin_options
@click.option("--dry-run", is_flag=True, help="Only report what would be freed, per repository.")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    help="Keep blobs (and untagged manifests) stored or linked within this long: pushes in "
    "flight (90s, 30m, 24h, 7d; 0 keeps nothing).",
)
@click.option(
    "--untagged",
    is_flag=True,
    help="Also delete manifests no tag and no index reaches (and referrers of a deleted "
    "subject), then their blobs.",
)
@click.option(
    "--status", "show_status", is_flag=True, help="Show the running collection, the last "
    "result and the schedule; start nothing.",
)  # fmt: skip
@click.option(
    "--schedule",
    default=None,
    metavar="EVERY",
    help="Make the cluster collect every EVERY (24h, 7d) with --grace and --untagged, on one "
    "replica at a time; 'off' stops it. Starts nothing now.",
)
@json_option
def gc(
    existing: str,
    username: str,
    password: str | None,
    dry_run: bool,
    grace: str,
    untagged: bool,
    show_status: bool,
    schedule: str | None,
    as_json: bool,
) -> None:
    """Delete blobs no manifest references, while pushes and pulls go on.

    A blob is collected when no manifest in any repository references it and it was
    linked (or stored) longer ago than --grace; a push that needs it meanwhile either keeps
    it or fails cleanly and is retried. One collection runs at a time in the cluster.
    """
    from moorage.cluster.gc import parse_duration

    try:
        grace_s = parse_duration(grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from None
    client = admin_client(existing, username, password)
    try:
        if show_status:
            doc = client.call("GET", "/api/v0/gc")
            emit(as_json, doc, status_text(doc))
            return
        if schedule is not None:
            interval: float | None = None
            if schedule.strip().lower() != "off":
                try:
                    interval = parse_duration(schedule, "--schedule")
                except ValueError as exc:
                    raise click.BadParameter(str(exc), param_hint="--schedule") from None
            body = {"interval": interval, "grace": grace_s, "untagged": untagged}
            doc = client.call("POST", "/api/v0/gc/schedule", body, idempotent=True)  # sets it
            emit(as_json, doc, schedule_text(doc.get("schedule")))
            return
        body = {"dry_run": dry_run, "grace": grace_s, "untagged": untagged, "wait": dry_run}
        # A dry run changes nothing: another replica may be asked after no answer.
        started = client.call("POST", "/api/v0/gc", body, idempotent=dry_run)
        # A dry run answers its report (it takes no lock and keeps no result to poll for).
        # Either names its run: an answer without one is no replica's (not "freed 0 blobs").
        run = str(started["run"])
        result = (
            started if dry_run else _wait(client, run, show=sys.stderr.isatty() and not as_json)
        )
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    if result.get("error"):
        raise Failed(f"garbage collection failed: {result['error']}")
    emit(as_json, result, result_text(result))


def schedule_text(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "no scheduled garbage collection"
    untagged = ", untagged manifests too" if doc.get("untagged") else ""
    return (
        f"garbage collection every {float(doc.get('interval', 0)):g} s "
        f"(grace {float(doc.get('grace', 0)):g} s{untagged}), on one replica at a time"
    )


def status_text(doc: dict[str, Any]) -> str:
    lines = []
    running = doc.get("running")
    lines.append(f"running: {_progress_line(running)}" if running else "running: none")
    last = doc.get("last")
    if not last:
        lines.append("last: none")
    elif last.get("error"):
        lines.append(f"last: run {last.get('run')} failed: {last['error']}")
    else:
        lines.append(f"last: run {last.get('run')}: " + result_text(last).splitlines()[0])
    lines.append("schedule: " + schedule_text(doc.get("schedule")))
    return "\n".join(lines)


COMMANDS = [gc]
