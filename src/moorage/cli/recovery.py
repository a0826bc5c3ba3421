"""Recovery: `repair` (one damaged replica), `emergency-repair` (quorum lost), `restore` (all
replicas lost)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from moorage.cli.base import Command, Failed, emit
from moorage.cli.confirm import confirm
from moorage.cli.options import (
    admin_client,
    admin_options,
    ca_file_option,
    ca_fingerprint_option,
    check_http_addr,
    confirm_options,
    data_dir_option,
    etcd_host_option,
    existing_urls,
    json_option,
    log_format_option,
    log_setting,
    passphrase,
    passphrase_option,
    password_option,
    ports_options,
    storage_arg,
    transport_options,
    transport_settings,
    trusting_data_dirs,
    username_option,
)
from moorage.config import DataDir
from moorage.errors import MoorageError


@click.command(cls=Command)
@admin_options
@data_dir_option("The replica.")
@confirm_options
@json_option
def repair(
    existing: str,
    username: str,
    password: str | None,
    data_dir: str,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Rebuild one damaged replica in place (same id and addresses; etcd data wiped and
    re-synced). Prints what it will wipe and keep, then asks (--yes, --dry-run)."""
    from moorage.cluster.status_report import status_answer
    from moorage.recovery import repair as repairing

    client = admin_client(existing, username, password)
    d = DataDir(data_dir)
    plan, text = repairing.plan(status_answer(client.call("GET", "/api/v0/cluster/status")), d)
    confirm("repair", text, plan, yes=yes, dry_run=dry_run, as_json=as_json)
    result = repairing.repair(client, d)
    emit(as_json, result.to_json(), result.text())


@click.command("emergency-repair", cls=Command)
@data_dir_option("A survivor.")
@click.option("--existing", default=None, help="Surviving replicas' URLs to compare too.")
@ca_file_option
@ca_fingerprint_option
@click.option(
    "--candidate-dir",
    default=None,
    callback=trusting_data_dirs,
    help="Other local data directories to compare.",
)
@username_option("Admin user for --existing (or MOORAGE_USERNAME).")
@password_option("Admin password for --existing (or MOORAGE_PASSWORD).")
@confirm_options
@click.option(
    "--force",
    is_flag=True,
    help="Act even though a member answers whose state cannot be compared; never while a "
    "quorum exists or a more up-to-date survivor is elsewhere.",
)
@click.option("--no-replay", is_flag=True, help="Do not replay the journal.")
@json_option
def emergency_repair(
    data_dir: str,
    existing: str | None,
    candidate_dir: str | None,
    username: str,
    password: str | None,
    dry_run: bool,
    yes: bool,
    force: bool,
    no_replay: bool,
    as_json: bool,
) -> None:
    """Quorum lost: make a one-replica cluster from the most up-to-date survivor. Prints the
    plan (candidates compared, what is kept and could be lost), then asks (--yes, --dry-run)."""
    from moorage.recovery import emergency
    from moorage.recovery.client import AdminClient

    client = None
    urls: list[str] = []
    if existing:
        urls = existing_urls(existing)
        pinned = click.get_current_context().meta.get("moorage.ca_fingerprint")
        if pinned:  # survivors that are down pin nothing; a wrong CA is refused
            from moorage.pki.trust import trust_ca_pem
            from moorage.recovery.client import ClusterUnreachable, fetch_ca

            with contextlib.suppress(ClusterUnreachable):
                trust_ca_pem(fetch_ca(urls, pinned).pem)
        client = AdminClient(urls, username, password or "")
    dirs = [DataDir(p) for p in (candidate_dir or "").split(",") if p.strip()]
    prepared = emergency.prepare(
        DataDir(data_dir), dirs, client, urls, force=force, replay=not no_replay
    )
    problems = prepared.refused
    public = prepared.to_json()
    if problems:
        click.echo(json.dumps(public, indent=2) if as_json else _describe_plan(public))
        raise Failed("emergency repair refused:\n  " + "\n  ".join(problems))
    confirm(
        "emergency-repair",
        _describe_plan(public),
        public,
        yes=yes,
        dry_run=dry_run,
        as_json=as_json,
    )
    try:
        result = emergency.execute(prepared, replay=not no_replay)
    except MoorageError as exc:
        raise Failed(f"emergency repair failed: {exc}") from None
    public["result"] = result
    text = [
        f"Replica {result['replica_id']} is now a one-replica cluster (epoch "
        f"{result['epoch']}) at {result['url']} and accepts writes; journal entries replayed: "
        f"{result['journal_replayed']['applied']}."
    ]
    for r in result["rejoin"]:
        text.append(
            f"Replica {r['replica_id']} survived but is fenced now; to make it a replica of the "
            f"repaired cluster again, run on its host: {' && '.join(r['commands'])}"
        )
    text.append(
        f"Next: moorage status --existing {result['url']} prints the joins that restore "
        "fault tolerance (one replica at a time: moorage join --existing "
        f"{result['url']} --data-dir NEW_DIR --http-addr HOST:PORT --etcd-client-port "
        "CLIENT_PORT --etcd-peer-port PEER_PORT)"
    )
    emit(as_json, public, "\n".join(text))


def _describe_plan(doc: dict[str, Any]) -> str:
    chosen = doc["chosen"]
    lines = [
        "Emergency repair plan",
        f"  survivor: replica {chosen['replica_id']} ({chosen['candidate']}), newest registry "
        f"data at revision {chosen['data_revision']}",
        "  candidates:",
    ]
    for c in doc["candidates"]:
        if c["data_revision"] is None:
            lines.append(f"    {c['candidate']}: unusable ({c['error']})")
        else:
            behind = c["behind_by_revisions"]
            note = (
                "chosen"
                if behind == 0 and c["candidate"] == chosen["candidate"]
                else (f"would lose {behind} revisions of registry data" if behind else "as new")
            )
            lines.append(
                f"    {c['candidate']} (replica {c['replica_id']}): revision "
                f"{c['data_revision']}, {note}"
            )
    others = [r for r in doc["old_replicas"] if r != chosen["replica_id"]]
    lines.append(
        "  will: fence the old epoch in blob storage, remove replicas "
        f"{', '.join(others) or '(none)'} from the cluster, keep the cluster id, "
        "start the survivor alone"
    )
    lines.append(
        "  keeps: the survivor's data directory and blob storage (never deleted); the other "
        "replicas' directories are left as they are (fenced)"
    )
    lines.append(
        "  could lose: changes held only by replicas that were neither compared nor reachable"
        + (
            " (the journal replay below brings back those the journal recorded)"
            if doc.get("journal_replay") is not None
            else ", and the journal's changes (not replayed: --no-replay)"
        )
    )
    for r in doc.get("rejoin") or []:
        lines.append(
            f"  then, on the host of replica {r['replica_id']} (a survivor it fences): "
            + " && ".join(r["commands"])
        )
    replay = doc.get("journal_replay")
    if replay is None:
        lines.append("  journal: not replayed (--no-replay)")
    else:
        lines.append(
            f"  journal: {replay['entries']} change(s) newer than the survivor will be "
            "replayed" + (": " if replay["entries"] else "")
        )
        lines += [f"    {c}" for c in replay["changes"]]
    return "\n".join(lines)


@click.command(cls=Command)
@click.option(
    "--in",
    "archive",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="The backup archive (made by 'moorage backup').",
)
@data_dir_option("New replica.")
@click.option("--http-addr", required=True, help="Listen address, HOST:PORT.")
@click.option(
    "--storage",
    required=True,
    help="Blob storage: a directory, or s3://BUCKET/PREFIX?endpoint=URL&region=R.",
)
@ports_options
@etcd_host_option
@click.option(
    "--replay-journal/--no-replay-journal",
    default=True,
    show_default=True,
    help="Re-apply the changes (pushes, tags, deletes) the journal in blob storage holds from "
    "after the backup. On by default; --no-replay-journal restores the backup alone and loses "
    "every push acknowledged after it.",
)
@click.option(
    "--admin-password",
    envvar="MOORAGE_ADMIN_PASSWORD",
    default=None,
    help="Admin password of the new cluster when the backup holds no users (or "
    "MOORAGE_ADMIN_PASSWORD; default: generated and printed once).",
)
@passphrase_option
@transport_options
@log_format_option
@confirm_options
@json_option
def restore(
    archive: str,
    data_dir: str,
    http_addr: str,
    storage: str,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    etcd_host: str,
    replay_journal: bool,
    admin_password: str | None,
    passphrase_file: str | None,
    tls: bool,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
    log_format: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """All replicas lost: a new one-replica cluster (new cluster id) from a backup. Prints
    what it restores and how many journal entries it replays, then asks (--yes, --dry-run)."""
    from moorage.recovery.restore import plan as restore_plan
    from moorage.recovery.restore import restore as do_restore

    check_http_addr(http_addr)
    transport = transport_settings(tls, tls_cert, tls_key, insecure_http)
    transport.update(log_setting(log_format))  # kept in moorage.json with the transport
    secret = passphrase(passphrase_file)
    plan = restore_plan(
        Path(archive), DataDir(data_dir), http_addr, storage_arg(storage), replay_journal, secret
    )
    confirm("restore", plan.text(), plan.to_json(), yes=yes, dry_run=dry_run, as_json=as_json)
    result = do_restore(
        Path(archive),
        DataDir(data_dir),
        http_addr,
        storage_arg(storage),
        etcd_client_port,
        etcd_peer_port,
        replay_journal,
        admin_password,
        secret,
        etcd_host=etcd_host,
        transport=transport,
    )
    emit(as_json, result.to_json(), result.text())


COMMANDS = [repair, emergency_repair, restore]
