"""The one confirmation step of every command that deletes or replaces state.

`destroy`, `remove`, `repair`, `restore` and `emergency-repair` compute their plan first (what
they will stop, delete or replace, what is kept, what could be lost), then call `confirm`:

- `--dry-run`: the plan is printed (`--json`: as JSON) and the command exits 0, changing nothing;
- `--yes`: the plan is printed and the command proceeds;
- otherwise, on a terminal, `Proceed? [y/N]` is asked (anything but y/yes changes nothing,
  exit 1); without a terminal the command refuses (exit 1) and says to add `--yes` or
  `--dry-run`.

With `--json` the plan text goes to stderr so that stdout holds the result's JSON alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from moorage.config import DataDir
from moorage.errors import MoorageError


def confirm_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--dry-run` and `--yes` (the command takes `dry_run` and `yes`)."""
    fn = click.option(
        "--yes",
        is_flag=True,
        help="Do not ask 'Proceed? [y/N]': carry out the printed plan at once (required "
        "without a terminal).",
    )(fn)
    fn = click.option(
        "--dry-run",
        is_flag=True,
        help="Only print the plan (with --json: as JSON) and change nothing.",
    )(fn)
    return fn


def confirm(
    command: str, text: str, plan: dict[str, Any], *, yes: bool, dry_run: bool, as_json: bool
) -> None:
    """Print `text` (the plan); return when the command may proceed, else exit."""
    if dry_run:
        if as_json:
            click.echo(json.dumps({**plan, "dry_run": True}, indent=2))
        else:
            click.echo(text)
            click.echo("dry run: nothing was changed")
        raise click.exceptions.Exit(0)
    click.echo(text, err=as_json)
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(
            f"not confirmed: '{command}' deletes or replaces state and asks before it acts, but "
            "stdin is not a terminal. Nothing was changed. Add --yes to carry out the plan "
            "above, or --dry-run to only print it."
        )
    if not click.confirm("Proceed?", default=False, err=as_json):
        click.echo("not confirmed: nothing was changed", err=True)
        raise click.exceptions.Exit(1)


def destroy_plan(data_dir: DataDir) -> tuple[dict[str, Any], str]:
    """What `moorage destroy` will stop and delete, and what it keeps."""
    from moorage.cluster.processes import alive, cmdline, read_pid

    path = data_dir.path
    config = None
    if data_dir.exists():
        try:
            config = data_dir.load()
        except MoorageError:
            config = None
    storage = Path(config.storage).resolve() if config is not None else None
    processes = []
    if data_dir.run_dir.is_dir():
        for pid_file in sorted(data_dir.run_dir.glob("*.pid")):
            pid = read_pid(pid_file)
            if pid is not None and alive(pid) and str(path) in cmdline(pid):
                processes.append({"name": pid_file.stem, "pid": pid})
    files = []
    for p in (data_dir.etcd_dir, data_dir.run_dir, data_dir.log_dir, data_dir.config_file):
        if storage is not None and (p == storage or p in storage.parents):
            continue
        if p.exists():
            files.append(str(p))
    plan: dict[str, Any] = {
        "command": "destroy",
        "data_dir": str(path),
        "replica_id": config.replica_id if config else None,
        "cluster_id": config.cluster_id if config else None,
        "stops": processes,
        "deletes": files,
        "keeps": [str(storage)] if storage is not None else [],
        "could_lose": (
            "this replica's copy of the registry metadata (its etcd data). The cluster is not "
            "told: if the replica is still a member, remove it first with 'moorage remove'. If "
            "it holds the only copy (a one-replica cluster, or the last survivor of a lost "
            "quorum), that metadata is gone except what a backup and the journal in blob "
            "storage hold."
            if files
            else "nothing: there is nothing to delete"
        ),
    }
    lines = [f"Destroy plan for {path}"]
    if config is not None:
        lines.append(f"  replica {config.replica_id} of cluster {config.cluster_id}")
    if processes:
        lines.append(
            "  will stop: " + ", ".join(f"{p['name']} (pid {p['pid']})" for p in processes)
        )
    else:
        lines.append("  will stop: nothing (no process of this replica is running)")
    if files:
        lines.append("  will delete:")
        lines += [f"    {f}" for f in files]
    else:
        lines.append("  will delete: nothing (no replica state here)")
    if storage is not None:
        lines.append(f"  keeps: blob storage {storage} (never deleted)")
    else:
        lines.append("  keeps: blob storage (never deleted)")
    lines.append(f"  could lose: {plan['could_lose']}")
    return plan, "\n".join(lines)


def remove_text(plan: dict[str, Any]) -> str:
    lines = ["Remove plan"]
    for r in plan["removes"]:
        state = (
            "answers now and is healthy"
            if r["healthy"]
            else ("answers now but is unhealthy" if r["answers"] else "does not answer now")
        )
        where = f" at {r['url']}" if r["url"] else ""
        lines.append(
            f"  will remove replica {r['replica_id']}{where} "
            f"({'voting member' if r['voter'] else 'not a voting member'}; {state})"
        )
        if r["healthy"]:
            lines.append(
                "    it is healthy: removing it lowers the failures the cluster can survive"
            )
    lines.append(
        f"  after: {plan['members']} voting member(s) "
        f"({', '.join(plan['remaining']) or 'none'}), quorum {plan['needed']}, "
        f"{plan['healthy_after']} healthy; survives {plan['survives_failures_after']} more "
        "failure(s)"
    )
    lines.append(
        "  keeps: blob storage and the registry data (held by the remaining members); a "
        "removed replica's data directory is left as is (clear it with 'moorage destroy')"
    )
    lines.append(
        "  could lose: nothing acknowledged; a removed replica that still runs stops serving "
        "the cluster"
    )
    return "\n".join(lines)


def repair_plan(status: dict[str, Any], data_dir: DataDir) -> tuple[dict[str, Any], str]:
    """What `moorage repair` will do to the replica of `data_dir`."""
    from moorage.cluster.lifecycle import running_pid

    config = data_dir.load()
    row = next((r for r in status.get("replicas", []) if r.get("id") == config.replica_id), None)
    plan: dict[str, Any] = {
        "command": "repair",
        "replica_id": config.replica_id,
        "cluster_id": config.cluster_id,
        "data_dir": str(data_dir.path),
        "running": running_pid(data_dir) is not None,
        "member": row is not None,
        "healthy": bool(row and row.get("healthy")),
        "wipes": str(data_dir.etcd_dir),
        "keeps": [str(data_dir.config_file), config.storage],
        "rejoins_as": {
            "replica_id": config.replica_id,
            "url": config.url,
            "etcd_client_port": config.etcd_client_port,
            "etcd_peer_port": config.etcd_peer_port,
        },
    }
    lines = [
        f"Repair plan for replica {config.replica_id} ({data_dir.path})",
        "  will stop: the replica"
        + (" (it is running now)" if plan["running"] else " (not running now)"),
    ]
    if row is not None:
        lines.append(
            "  will remove its etcd member from the cluster (quorum checked first), then rejoin it"
        )
    lines.append(
        f"  will wipe: {data_dir.etcd_dir} (this replica's etcd data) and re-sync it from the "
        f"cluster under the same id {config.replica_id}, URL {config.url} and etcd ports "
        f"{config.etcd_client_port}/{config.etcd_peer_port}"
    )
    lines.append(
        f"  keeps: its configuration {data_dir.config_file}, logs, and blob storage "
        f"{config.storage} (never deleted)"
    )
    if plan["healthy"]:
        lines.append(
            "  NOTE: this replica is healthy now; repair is for a damaged replica. Until it "
            "has re-synced the cluster has one replica fewer."
        )
    lines.append(
        "  could lose: nothing the cluster acknowledged (every committed change is on a "
        "quorum of the other members)"
    )
    return plan, "\n".join(lines)
