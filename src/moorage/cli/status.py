"""`moorage status`: cluster health, quorum, the scenario and the next command to run."""

from __future__ import annotations

import sys
from typing import Any

import click

from moorage.cli.base import Command, emit
from moorage.cli.options import admin_client, admin_options, json_option, trusting_data_dirs
from moorage.cluster.status_report import StatusReport
from moorage.config import DataDir

# `moorage status` exit code per scenario (DESIGN.md §2); 1 = could not tell, 2 = bad usage.
STATUS_EXIT_CODES = {
    "healthy": 0,
    "replicas-unhealthy": 10,
    "quorum-lost": 11,
    "unreachable": 12,
    "all-lost": 13,
    "starting": 14,  # replicas are starting or catching up: wait, run status again
}


def status_text(report: StatusReport | dict[str, Any]) -> str:
    """`moorage status` as text (of the report or its JSON form). When no replica answered
    (unreachable, all-lost) it says which URLs and data directories were examined and what
    each held, never `None`."""
    from moorage.cluster.guidance import next_block

    doc = report.to_json() if isinstance(report, StatusReport) else report

    q = doc["quorum"]
    if doc["cluster_id"] is None:
        head = "cluster: not known (no replica answered and no data directory names it)"
    elif doc["epoch"] is None:
        head = f"cluster {doc['cluster_id']} (from its data directories; no replica answered)"
    else:
        head = f"cluster {doc['cluster_id']}  epoch {doc['epoch']}"
    lines = [
        head,
        f"scenario: {doc['scenario']}"
        + (
            f"  (quorum {q['healthy']}/{q['members']}, needs {q['needed']})" if q["members"] else ""
        ),
    ]
    if doc.get("fault_tolerance") is not None:
        ft = doc["fault_tolerance"]
        lines.append(
            f"fault tolerance: survives {ft} more replica failure(s)"
            + (" -- NONE: one more failure loses quorum" if ft == 0 else "")
        )
    if doc["epoch"] is None:  # nothing answered: what was examined, and what each held
        urls = doc.get("urls_examined") or []
        lines.append(
            f"replica URLs examined: {', '.join(urls) if urls else '(none given)'}"
            f" -- none answered ({doc.get('error') or 'no answer'})"
        )
        if not doc["replicas"]:
            lines.append("data directories examined: none (pass --data-dir D1,D2,...)")
        else:
            lines.append("data directories examined:")
        for r in doc["replicas"]:
            if r["id"] is None:
                lines.append(f"  {r['data_dir']}: no usable replica state ({r['error']})")
            else:
                what = f"starting ({r['progress']})" if r.get("state") == "starting" else r["error"]
                lines.append(
                    f"  {r['data_dir']}: replica {r['id']} of cluster "
                    f"{r.get('cluster_id') or doc['cluster_id']} at {r['url']}, state present, "
                    f"{what}"
                )
    else:
        for r in doc["replicas"]:
            role = "leader" if r["leader"] else "learner" if r["learner"] else "member"
            if r["healthy"]:
                state = "healthy"
            elif r.get("state") == "starting":
                state = f"starting: {r['progress']}"
            else:
                state = f"UNHEALTHY: {r['error']}"
            lines.append(f"  {r['id']}  {r['url']}  {role}  raft {r['raft_index']}  {state}")
    if doc.get("certificates_expiring"):  # only then: 30 days ahead (moorage certs status)
        from moorage.recovery.certs import expiry_lines

        lines.extend(expiry_lines(doc["certificates_expiring"]))
    # A pasteable shell block: one command per line, explanations as comment lines.
    lines.extend(next_block(doc))
    return "\n".join(lines)


@click.command(cls=Command)
@admin_options
@click.option(
    "--data-dir",
    "data_dirs",
    default=None,
    callback=trusting_data_dirs,
    help="Local data directories to inspect too (comma-separated); their cluster CA is "
    "trusted for HTTPS.",
)
@json_option
def status(
    existing: str, username: str, password: str | None, data_dirs: str | None, as_json: bool
) -> None:
    """Cluster health, quorum, the scenario, and the next command to run.

    Exit code: 0 healthy, 10 replicas-unhealthy, 11 quorum-lost, 12 unreachable,
    13 all-lost, 14 starting (replicas are starting or catching up: wait, run status
    again), 1 when the scenario could not be told, 2 bad usage.

    The text ends with a `next:` block that can be pasted into a shell as is (after
    replacing the UPPER_CASE placeholders it explains); JSON has the same as `commands`.
    """
    from moorage.recovery.certs import expiring as expiring_certs
    from moorage.recovery.status import status as cluster_status

    client = admin_client(existing, username, password)
    dirs = [DataDir(p) for p in (data_dirs or "").split(",") if p.strip()]
    report = cluster_status(client, dirs)
    doc = report.to_json()
    healthy = [(r["id"], r["url"]) for r in doc["replicas"] if r.get("healthy") and r.get("url")]
    if expiring := expiring_certs(client, healthy):
        doc["certificates_expiring"] = expiring
    emit(as_json, doc, status_text(doc))
    # Scripts and monitoring read the scenario from the exit code (DESIGN.md §2); 1 when the
    # scenario could not be told.
    code = STATUS_EXIT_CODES.get(report.scenario, 1)
    if code:
        sys.exit(code)


COMMANDS = [status]
