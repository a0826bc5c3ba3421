"""`moorage` commands. Exit codes: 0 success, 1 operation failed, 2 bad usage."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import click

from moorage import __version__
from moorage.cli.confirm import confirm, confirm_options
from moorage.config import (
    DEFAULT_ETCD_CLIENT_PORT,
    DEFAULT_ETCD_HOST,
    DEFAULT_ETCD_PEER_PORT,
    DEFAULT_HTTP_ADDR,
    DataDir,
    ReplicaConfig,
    new_cluster_id,
    new_replica_id,
    split_addr,
)
from moorage.errors import MoorageError

# `moorage status` exit code per scenario (DESIGN.md §2); 1 = could not tell, 2 = bad usage.
STATUS_EXIT_CODES = {
    "healthy": 0,
    "replicas-unhealthy": 10,
    "quorum-lost": 11,
    "unreachable": 12,
    "all-lost": 13,
    "starting": 14,  # replicas are starting or catching up: wait, run status again
}


class Failed(click.ClickException):
    """An operation failed: message on stderr, exit code 1."""

    exit_code = 1


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("MOORAGE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _ports(fn: Any) -> Any:
    fn = click.option(
        "--etcd-peer-port",
        type=click.IntRange(1, 65535),
        default=None,
        help=f"etcd peer port (default {DEFAULT_ETCD_PEER_PORT}).",
    )(fn)
    fn = click.option(
        "--etcd-client-port",
        type=click.IntRange(1, 65535),
        default=None,
        help=f"etcd client port (default {DEFAULT_ETCD_CLIENT_PORT}).",
    )(fn)
    return fn


def _etcd_host(fn: Any) -> Any:
    return click.option(
        "--etcd-host",
        default=DEFAULT_ETCD_HOST,
        show_default=True,
        help="Address this replica's etcd member listens on and advertises to its peers "
        "(and to other replicas as a client URL); use the host's address on a multi-host "
        "cluster.",
    )(fn)


def _http_addr(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        split_addr(value)
    except MoorageError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moorage")
def main() -> None:
    """Moorage: a private container registry that runs as a cluster of replicas."""


def new_replica_config(
    data_dir: DataDir,
    http_addr: str | None,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    cluster_id: str | None = None,
    etcd_host: str | None = None,
) -> ReplicaConfig:
    return ReplicaConfig(
        data_dir=str(data_dir.path),
        cluster_id=cluster_id or new_cluster_id(),
        replica_id=new_replica_id(),
        http_addr=http_addr or DEFAULT_HTTP_ADDR,
        storage=str(Path(storage).resolve()) if storage else str(data_dir.path / "blobs"),
        etcd_client_port=etcd_client_port or DEFAULT_ETCD_CLIENT_PORT,
        etcd_peer_port=etcd_peer_port or DEFAULT_ETCD_PEER_PORT,
        etcd_host=etcd_host or DEFAULT_ETCD_HOST,
    )


def _check_same_settings(
    config: ReplicaConfig,
    http_addr: str | None,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
) -> None:
    changed = {
        "--http-addr": http_addr and http_addr != config.http_addr,
        "--storage": storage and str(Path(storage).resolve()) != config.storage,
        "--etcd-client-port": etcd_client_port and etcd_client_port != config.etcd_client_port,
        "--etcd-peer-port": etcd_peer_port and etcd_peer_port != config.etcd_peer_port,
    }
    bad = [flag for flag, differs in changed.items() if differs]
    if bad:
        raise Failed(
            f"{config.data_dir} already holds a replica with other settings for "
            f"{', '.join(bad)} (see its moorage.json); run without them or use another --data-dir"
        )


def _create(
    d: DataDir,
    http_addr: str | None,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    etcd_host: str | None = None,
) -> ReplicaConfig:
    """Write the configuration of a new one-replica cluster into an empty data directory."""
    from moorage.cluster.supervisor import check_http_addr

    if d.path.exists() and (d.etcd_dir.exists() or d.config_file.exists()):
        raise Failed(
            f"{d.path} already holds replica state; use 'moorage start --data-dir {d.path}', "
            f"or 'moorage destroy --data-dir {d.path}' to start over"
        )
    config = new_replica_config(
        d, http_addr, storage, etcd_client_port, etcd_peer_port, etcd_host=etcd_host
    )
    check_http_addr(config)
    d.make_dirs()
    d.save(config)
    return config


def _reexec_with_absolute(data_dir: DataDir) -> None:
    """Every process of a replica carries the absolute data directory in its command line."""
    if str(data_dir.path) in sys.argv[1:]:
        return
    args = list(sys.argv[1:])
    for i, arg in enumerate(args):
        if arg == "--data-dir" and i + 1 < len(args):
            args[i + 1] = str(data_dir.path)
        elif arg.startswith("--data-dir="):
            args[i] = f"--data-dir={data_dir.path}"
    os.execv(sys.executable, [sys.executable, "-m", "moorage", *args])


@main.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Replica state.")
@click.option("--http-addr", default=None, help=f"Listen address (default {DEFAULT_HTTP_ADDR}).")
@click.option("--storage", default=None, help="Blob storage directory (default DATA_DIR/blobs).")
@_ports
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=lambda: int(os.environ.get("MOORAGE_WORKERS", "1")),
    show_default="1 or MOORAGE_WORKERS",
    help="API worker processes.",
)
def run(
    data_dir: str,
    http_addr: str | None,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    workers: int,
) -> None:
    """Run a replica in the foreground; an empty DATA_DIR becomes a new one-replica cluster."""
    from moorage.server.process import run_replica

    _setup_logging()
    d = DataDir(data_dir)
    _reexec_with_absolute(d)
    http_addr = _http_addr(http_addr)
    password = os.environ.get("MOORAGE_ADMIN_PASSWORD") or None
    try:
        if d.exists():
            _check_same_settings(d.load(), http_addr, storage, etcd_client_port, etcd_peer_port)
        else:
            _create(d, http_addr, storage, etcd_client_port, etcd_peer_port)
            if password is None:
                password = secrets.token_urlsafe(18)
                click.echo(
                    "Created a new one-replica cluster.\n"
                    f"  admin user:     admin\n  admin password: {password}\n"
                    "This password is shown once and stored only as a hash; "
                    "set MOORAGE_ADMIN_PASSWORD to choose your own.",
                    err=True,
                )
        run_replica(d, password, workers=workers)
    except MoorageError as exc:
        raise Failed(str(exc)) from None


def _emit(as_json: bool, doc: dict[str, Any], text: str) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(text)


@main.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Replica state.")
@click.option("--http-addr", required=True, help="Listen address, HOST:PORT.")
@click.option("--storage", default=None, help="Blob storage directory (default DATA_DIR/blobs).")
@click.option(
    "--admin-password",
    default=None,
    envvar="MOORAGE_ADMIN_PASSWORD",
    help="Admin password (default: generated and printed once).",
)
@_ports
@_etcd_host
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def install(
    data_dir: str,
    http_addr: str,
    storage: str | None,
    admin_password: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    etcd_host: str,
    as_json: bool,
) -> None:
    """Create a new cluster with its first replica and start it in the background."""
    from moorage.cluster.lifecycle import start_background

    d = DataDir(data_dir)
    _http_addr(http_addr)
    generated = admin_password is None
    password = admin_password or secrets.token_urlsafe(18)
    try:
        config = _create(d, http_addr, storage, etcd_client_port, etcd_peer_port, etcd_host)
        pid = start_background(d, password).pid
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    doc: dict[str, Any] = {
        "cluster_id": config.cluster_id,
        "replica_id": config.replica_id,
        "url": config.url,
        "data_dir": str(d.path),
        "storage": config.storage,
        "pid": pid,
        "admin_user": "admin",
    }
    if generated:
        doc["admin_password"] = password
    text = (
        f"Installed replica {config.replica_id} of new cluster {config.cluster_id}\n"
        f"  URL:        {config.url}\n  data dir:   {d.path}\n  storage:    {config.storage}\n"
        f"  admin user: admin"
    )
    if generated:
        text += f"\n  admin password (shown once, stored only as a hash): {password}"
    _emit(as_json, doc, text)


@main.command()
@click.option(
    "--data-dir",
    "data_dirs",
    required=True,
    multiple=True,
    help="Replica state; several (comma-separated or repeated) start together.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def start(data_dirs: tuple[str, ...], as_json: bool) -> None:
    """Start installed replicas in the background (a no-op for one that is running).

    Several data directories (the replicas of a stopped cluster) start together; the
    command returns once all are healthy. A single replica of a stopped cluster returns
    once its API answers (it cannot be healthy before enough of its peers run)."""
    from moorage.cluster.lifecycle import start_many

    paths = [p.strip() for arg in data_dirs for p in arg.split(",") if p.strip()]
    if not paths:
        raise click.UsageError("give at least one --data-dir")
    try:
        results = start_many([DataDir(p) for p in paths])
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    docs = []
    lines = []
    for r in results:
        state = "already running" if r.already else "started"
        if not r.healthy:
            state += f", not healthy yet: {r.error} (start the cluster's other replicas)"
        docs.append(
            {"replica_id": r.config.replica_id, "url": r.config.url, "pid": r.pid, "state": state}
        )
        lines.append(f"replica {r.config.replica_id} {state} (pid {r.pid}) at {r.config.url}")
    doc: dict[str, Any] = docs[0] if len(docs) == 1 else {"replicas": docs}
    _emit(as_json, doc, "\n".join(lines))


@main.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Replica state.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stop(data_dir: str, as_json: bool) -> None:
    """Stop a replica and its etcd member; returns once they are gone and their ports free."""
    from moorage.cluster.lifecycle import stop as stop_replica

    d = DataDir(data_dir)
    if not d.exists():
        raise Failed(f"{d.path} is not a Moorage data directory (no moorage.json)")
    try:
        stopped = stop_replica(d)
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    state = "stopped" if stopped else "not running"
    _emit(as_json, {"data_dir": str(d.path), "state": state}, f"{d.path}: {state}")


@main.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Replica state.")
@confirm_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def destroy(data_dir: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Stop a replica and delete its local state (never blob storage), without telling the
    cluster: remove it from the cluster first with 'moorage remove'. Prints what it will stop
    and delete, then asks (--yes, --dry-run)."""
    from moorage.cli.confirm import destroy_plan
    from moorage.cluster.lifecycle import destroy as destroy_replica

    d = DataDir(data_dir)
    plan, text = destroy_plan(d)
    if plan["deletes"] or plan["stops"] or dry_run:
        confirm("destroy", text, plan, yes=yes, dry_run=dry_run, as_json=as_json)
    try:
        removed = destroy_replica(d)
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    _emit(
        as_json,
        {"data_dir": str(d.path), "removed": removed},
        "\n".join(f"removed {p}" for p in removed) or f"{d.path}: nothing to remove",
    )


def _admin_options(fn: Any) -> Any:
    fn = click.option(
        "--password",
        envvar="MOORAGE_PASSWORD",
        default=None,
        help="Admin password (or MOORAGE_PASSWORD).",
    )(fn)
    fn = click.option(
        "--username",
        envvar="MOORAGE_USERNAME",
        default="admin",
        show_default=True,
        help="Admin user (or MOORAGE_USERNAME).",
    )(fn)
    fn = click.option(
        "--existing",
        required=True,
        help="URL of a replica of the cluster; a comma-separated list is tried in turn.",
    )(fn)
    return fn


def _client(existing: str, username: str, password: str | None) -> Any:
    from moorage.recovery.client import AdminClient, split_urls

    if password is None:
        raise click.UsageError("give the admin password with --password or MOORAGE_PASSWORD")
    try:
        return AdminClient(split_urls(existing), username, password)
    except MoorageError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@_admin_options
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="New replica.")
@click.option("--http-addr", required=True, help="Listen address of the new replica, HOST:PORT.")
@click.option(
    "--storage",
    default=None,
    help="Local path of the cluster's blob storage, if it differs from the cluster's own.",
)
@_ports
@_etcd_host
@click.option(
    "--unsafe-join",
    is_flag=True,
    help="Skip Moorage's checks (quorum, unhealthy replicas); etcd's own still apply.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def join(
    existing: str,
    username: str,
    password: str | None,
    data_dir: str,
    http_addr: str,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    etcd_host: str,
    unsafe_join: bool,
    as_json: bool,
) -> None:
    """Add a replica to a running cluster; returns once it is a healthy voting member."""
    from moorage.recovery.join import join as join_cluster

    client = _client(existing, username, password)
    _http_addr(http_addr)
    try:
        doc = join_cluster(
            client,
            DataDir(data_dir),
            http_addr,
            storage,
            etcd_client_port,
            etcd_peer_port,
            unsafe_join,
            etcd_host=etcd_host,
        )
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    _emit(
        as_json,
        doc,
        f"Replica {doc['replica_id']} joined cluster {doc['cluster_id']}\n"
        f"  URL:      {doc['url']}\n  data dir: {doc['data_dir']}\n  storage:  {doc['storage']}",
    )


@main.command()
@_admin_options
@click.option("--replica-id", required=True, help="Replica id(s) to remove, comma-separated.")
@click.option("--force", is_flag=True, help="Remove even if too few healthy voters would remain.")
@confirm_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def remove(
    existing: str,
    username: str,
    password: str | None,
    replica_id: str,
    force: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Take replicas out of the cluster, dead or alive. Prints which replicas go and the
    membership and quorum after, then asks (--yes, --dry-run)."""
    from moorage.cli.confirm import remove_text

    client = _client(existing, username, password)
    ids = [i.strip() for i in replica_id.split(",") if i.strip()]
    try:
        plan = client.call(
            "POST",
            "/api/v0/cluster/remove",
            {"replica_ids": ids, "force": force, "dry_run": True},
        )
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    if "removes" not in plan:  # a replica of an older version acted instead of planning
        raise Failed(f"{existing} does not support planning a remove; it removed {plan}")
    plan["command"] = "remove"
    confirm("remove", remove_text(plan), plan, yes=yes, dry_run=dry_run, as_json=as_json)
    try:
        doc = client.call("POST", "/api/v0/cluster/remove", {"replica_ids": ids, "force": force})
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    _emit(
        as_json,
        doc,
        f"removed {', '.join(doc['removed'])}; the cluster has {doc['members']} voting "
        f"members (quorum {doc['needed']}). Clear a removed replica's host with "
        "'moorage destroy --data-dir DIR' before reusing it.",
    )


def status_text(doc: dict[str, Any]) -> str:
    """`moorage status` as text. When no replica answered (unreachable, all-lost) it says
    which URLs and data directories were examined and what each held, never `None`."""
    from moorage.cluster.status import next_block

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
    # A pasteable shell block: one command per line, explanations as comment lines.
    lines.extend(next_block(doc))
    return "\n".join(lines)


@main.command()
@_admin_options
@click.option(
    "--data-dir",
    "data_dirs",
    default=None,
    help="Local data directories to inspect too (comma-separated).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
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
    from moorage.recovery.diagnose import status as cluster_status

    client = _client(existing, username, password)
    dirs = [DataDir(p) for p in (data_dirs or "").split(",") if p.strip()]
    try:
        doc = cluster_status(client, dirs)
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    _emit(as_json, doc, status_text(doc))
    # Scripts and monitoring read the scenario from the exit code (DESIGN.md §2); 1 when the
    # scenario could not be told.
    code = STATUS_EXIT_CODES.get(str(doc.get("scenario")), 1)
    if code:
        sys.exit(code)


@main.command("emergency-repair")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="A survivor.")
@click.option("--existing", default=None, help="Surviving replicas' URLs to compare too.")
@click.option("--candidate-dir", default=None, help="Other local data directories to compare.")
@click.option(
    "--username",
    envvar="MOORAGE_USERNAME",
    default="admin",
    show_default=True,
    help="Admin user for --existing (or MOORAGE_USERNAME).",
)
@click.option(
    "--password",
    envvar="MOORAGE_PASSWORD",
    default=None,
    help="Admin password for --existing (or MOORAGE_PASSWORD).",
)
@confirm_options
@click.option(
    "--force",
    is_flag=True,
    help="Act even though a member answers whose state cannot be compared; never while a "
    "quorum exists or a more up-to-date survivor is elsewhere.",
)
@click.option("--no-replay", is_flag=True, help="Do not replay the journal.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
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
    from moorage.recovery.client import AdminClient, split_urls
    from moorage.recovery.journal_replay import plan_replay

    client = None
    urls: list[str] = []
    if existing:
        urls = split_urls(existing)
        client = AdminClient(urls, username, password or "")
    dirs = [DataDir(p) for p in (candidate_dir or "").split(",") if p.strip()]
    try:
        doc = emergency.plan(DataDir(data_dir), dirs, client, urls)
        best = doc["_best"]
        problems = emergency.check_refusals(doc, force)
        replay = None
        if best.data_dir is not None and not no_replay:
            cfg = best.data_dir.load()
            replay = plan_replay(
                cfg.storage, cfg.cluster_id, (cfg.epoch, best.revision or 0)
            ).summary()
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    public = {k: v for k, v in doc.items() if not k.startswith("_")}
    public["journal_replay"] = replay
    public["refused"] = problems
    public["command"] = "emergency-repair"
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
        result = emergency.execute(doc, replay=not no_replay)
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
    _emit(as_json, public, "\n".join(text))


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


def _passphrase_option(fn: Any) -> Any:
    return click.option(
        "--passphrase-file",
        default=None,
        type=click.Path(dir_okay=False, exists=True),
        help="File holding the backup passphrase (or MOORAGE_BACKUP_PASSPHRASE).",
    )(fn)


def _passphrase(passphrase_file: str | None) -> str | None:
    """The passphrase from the subcommand's --passphrase-file, else from the one given to the
    `backup` group (`backup --passphrase-file F inspect X`), else the environment."""
    if passphrase_file is None:
        ctx = click.get_current_context(silent=True)
        while ctx is not None and passphrase_file is None:
            passphrase_file = ctx.params.get("passphrase_file")
            ctx = ctx.parent
    if passphrase_file:
        text = Path(passphrase_file).read_text().strip()
        if not text:
            raise click.UsageError(f"{passphrase_file} is empty")
        return text
    return os.environ.get("MOORAGE_BACKUP_PASSPHRASE") or None


@main.group(invoke_without_command=True)
@click.option("--existing", default=None, help="URL of a replica (a comma-separated list).")
@click.option(
    "--username",
    envvar="MOORAGE_USERNAME",
    default="admin",
    show_default=True,
    help="Admin user (or MOORAGE_USERNAME).",
)
@click.option(
    "--password",
    envvar="MOORAGE_PASSWORD",
    default=None,
    help="Admin password (or MOORAGE_PASSWORD).",
)
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Archive.")
@click.option("--include-blobs", is_flag=True, help="Also store layer and config blobs.")
@click.option(
    "--since",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="Previous backup: store only blobs it (and its bases) lack.",
)
@click.option(
    "--storage",
    "storage",
    default=None,
    type=click.Path(file_okay=False),
    help="Local path of the cluster's blob storage, if it differs from the cluster's own "
    "(bytes are read from there; without it, through the API).",
)
@_passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def backup(
    ctx: click.Context,
    existing: str | None,
    username: str,
    password: str | None,
    out: str | None,
    include_blobs: bool,
    since: str | None,
    storage: str | None,
    passphrase_file: str | None,
    as_json: bool,
) -> None:
    """Consistent online backup (`backup inspect FILE`, `backup verify FILE` check one)."""
    if ctx.invoked_subcommand is not None:
        return
    from moorage.recovery.backup import create

    if not existing or not out:
        raise click.UsageError("moorage backup needs --existing URL and --out FILE")
    client = _client(existing, username, password)
    bar: Any = None
    progress = None
    if sys.stderr.isatty() and not as_json:
        bar = click.progressbar(length=1, label="backing up", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

    try:
        doc = create(
            client,
            Path(out),
            include_blobs,
            Path(since) if since else None,
            progress,
            _passphrase(passphrase_file),
            Path(storage) if storage else None,
        )
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    finally:
        if bar is not None:
            bar.render_finish()
    for line in doc["invalid_records"]:
        click.echo(f"warning: left out of the backup, invalid: {line}", err=True)
    c = doc["counts"]
    _emit(
        as_json,
        doc,
        f"backup {doc['file']}: cluster {doc['cluster_id']} at revision {doc['revision']}, "
        f"{c['repositories']} repositories, {c['tags']} tags, {c['manifests']} manifests, "
        f"{doc['blobs_in_archive']} blobs in the archive"
        + (f" ({doc['blobs_from_base']} in {doc['base']})" if doc["base"] else "")
        + f", {doc['size']} bytes",
    )


@backup.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@_passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backup_inspect(file: str, passphrase_file: str | None, as_json: bool) -> None:
    """Version, cluster id, revision, counts, size and creation time of a backup."""
    import datetime

    from moorage.recovery.backup import inspect

    try:
        doc = inspect(Path(file), _passphrase(passphrase_file))
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    created = datetime.datetime.fromtimestamp(doc["created_at"], datetime.UTC).isoformat()
    lines = [
        f"file:        {doc['file']} ({doc['size']} bytes)",
        f"version:     {doc['version']}",
        f"cluster id:  {doc['cluster_id']} (epoch {doc['epoch']})",
        f"revision:    {doc['revision']}",
        f"created at:  {created}",
        "counts:      " + ", ".join(f"{k} {v}" for k, v in doc["counts"].items()),
        f"blobs:       {doc['blobs_in_archive']} in the archive"
        + (f", the rest in base {doc['base']}" if doc["base"] else ""),
    ]
    _emit(as_json, doc, "\n".join(lines))


@backup.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--storage", default=None, help="Blob storage to check referenced blobs in.")
@_passphrase_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backup_verify(
    file: str, storage: str | None, passphrase_file: str | None, as_json: bool
) -> None:
    """Check every checksum and every reference (tag -> manifest -> blobs)."""
    from moorage.recovery.backup import verify

    try:
        doc = verify(Path(file), Path(storage) if storage else None, _passphrase(passphrase_file))
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif doc["ok"]:
        click.echo(
            f"{file}: OK (checksums and references"
            + ("" if doc.get("blobs_checked") else "; blob bytes not checked: give --storage")
            + ")"
        )
    if not doc["ok"]:
        raise Failed(
            f"{file}: {len(doc['problems'])} problem(s):\n  " + "\n  ".join(doc["problems"])
        )


@main.command()
@click.option(
    "--in",
    "archive",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="The backup archive (made by 'moorage backup').",
)
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="New replica.")
@click.option("--http-addr", required=True, help="Listen address, HOST:PORT.")
@click.option("--storage", required=True, help="Blob storage directory.")
@_ports
@_etcd_host
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
@_passphrase_option
@confirm_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
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
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """All replicas lost: a new one-replica cluster (new cluster id) from a backup. Prints
    what it restores and how many journal entries it replays, then asks (--yes, --dry-run)."""
    from moorage.recovery.restore import plan as restore_plan
    from moorage.recovery.restore import restore as do_restore

    _http_addr(http_addr)
    passphrase = _passphrase(passphrase_file)
    try:
        plan = restore_plan(
            Path(archive), DataDir(data_dir), http_addr, Path(storage), replay_journal, passphrase
        )
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    confirm("restore", _restore_text(plan), plan, yes=yes, dry_run=dry_run, as_json=as_json)
    try:
        doc = do_restore(
            Path(archive),
            DataDir(data_dir),
            http_addr,
            Path(storage),
            etcd_client_port,
            etcd_peer_port,
            replay_journal,
            admin_password,
            passphrase,
            etcd_host=etcd_host,
        )
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    c = doc["counts"]
    text = [
        f"Restored backup of cluster {doc['from_cluster_id']} (revision {doc['backup_revision']})"
        f" as new cluster {doc['cluster_id']}",
        f"  replica {doc['replica_id']} at {doc['url']} (data {doc['data_dir']})",
        f"  {c['repositories']} repositories, {c['tags']} tags, {c['manifests']} manifests; "
        f"{doc['blobs_copied']} blobs copied from the archive",
    ]
    jr = doc["journal_replayed"]
    since = f"revision {jr['since_revision']} (epoch {jr['since_epoch']}"
    if jr.get("since_time") is not None:
        since += time.strftime(", taken %Y-%m-%d %H:%M:%S UTC", time.gmtime(jr["since_time"]))
    since += ")"
    if not jr["requested"]:
        text.append(
            f"  journal: NOT replayed (--no-replay-journal): changes made after the backup's "
            f"{since} are not restored"
        )
    else:
        text.append(
            f"  journal: {jr['applied']} change(s) replayed, made after the backup's {since}"
        )
        skipped = jr["unrecoverable"]
        if skipped:
            text.append(f"  journal: {len(skipped)} change(s) not replayed:")
            text += [f"    {line}" for line in skipped[:20]]
    if doc["missing_blobs"]:
        text.append(f"  MISSING: {len(doc['missing_blobs'])} referenced blob(s) found nowhere:")
        text += [f"    {d}" for d in doc["missing_blobs"][:20]]
    if "admin_password" in doc:
        text.append(f"  admin password (shown once): {doc['admin_password']}")
    text.append(
        f"Next: moorage status --existing {doc['url']} prints the joins that restore "
        f"fault tolerance (one replica at a time: moorage join --existing {doc['url']} "
        "--data-dir NEW_DIR --http-addr HOST:PORT --etcd-client-port CLIENT_PORT "
        "--etcd-peer-port PEER_PORT)"
    )
    _emit(as_json, doc, "\n".join(text))


def _restore_text(plan: dict[str, Any]) -> str:
    c = plan["counts"]
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(plan["backup_created_at"]))
    lines = [
        f"Restore plan from {plan['archive']}",
        f"  backup of cluster {plan['from_cluster_id']} at revision {plan['backup_revision']}"
        f" (epoch {plan['backup_epoch']}, taken {taken}): {c['repositories']} repositories, "
        f"{c['tags']} tags, {c['manifests']} manifests",
        f"  will create: a NEW cluster (new cluster id) with one replica at {plan['http_addr']},"
        f" data directory {plan['data_dir']}, blob storage {plan['storage']}",
        "  will verify the archive first (a corrupt one is refused, nothing changed), then copy "
        "the blobs the archive holds that blob storage lacks",
    ]
    n = plan["journal_entries"]
    if plan["replay_journal"]:
        lines.append(
            f"  journal: will replay {n} change(s) made after the backup, found in blob storage"
        )
        lines += [f"    {line}" for line in plan["journal_changes"][:20]]
    else:
        lines.append(
            f"  journal: NOT replayed (--no-replay-journal): {n} change(s) made after the "
            "backup will be lost"
        )
    lines.append("  keeps: blob storage (never deleted; only missing blobs are added)")
    lines.append(
        "  could lose: "
        + (
            "changes made after the backup that are not in the journal"
            if plan["replay_journal"]
            else f"the {n} journal change(s) above, and any not in the journal"
        )
        + "; the old cluster's replicas cannot rejoin the new cluster (new id)"
    )
    if plan["journal_rejected"]:
        lines.append(f"  journal: {plan['journal_rejected']} invalid entries will be skipped")
    lines += [f"  PROBLEM: {p}" for p in plan["problems"]]
    return "\n".join(lines)


@main.command()
@_admin_options
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="The replica.")
@confirm_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
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
    from moorage.cli.confirm import repair_plan
    from moorage.recovery.join import repair as repair_replica

    client = _client(existing, username, password)
    d = DataDir(data_dir)
    try:
        plan, text = repair_plan(client.call("GET", "/api/v0/cluster/status"), d)
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    confirm("repair", text, plan, yes=yes, dry_run=dry_run, as_json=as_json)
    try:
        doc = repair_replica(client, d)
    except MoorageError as exc:
        raise Failed(str(exc)) from None
    _emit(
        as_json,
        doc,
        f"Replica {doc['replica_id']} repaired in place: local store {doc['wiped']} wiped and "
        f"re-synced from the cluster; serving at {doc['url']}",
    )
