"""Replica lifecycle: `run`, `install`, `start`, `stop`, `destroy`."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from moorage.cli.base import Command, Failed, emit, setup_logging
from moorage.cli.confirm import confirm
from moorage.cli.options import (
    check_http_addr,
    confirm_options,
    data_dir_option,
    etcd_host_option,
    json_option,
    log_format_option,
    log_setting,
    ports_options,
    storage_option,
    transport_options,
    transport_settings,
    trusting_data_dirs,
)
from moorage.cluster.replica_config import check_same_settings, create_replica, storage_spec
from moorage.config import DEFAULT_HTTP_ADDR, DataDir, ReplicaConfig
from moorage.errors import MoorageError


def _with_transport(
    d: DataDir, config: ReplicaConfig, settings: dict[str, Any], fresh: bool
) -> ReplicaConfig:
    """Store the transport flags in the replica's config (a new one, or an existing one when
    any was given), then check that the API can serve that way: a new data directory that
    cannot is emptied again, so the command can be re-run with other flags."""
    from moorage.server.transport import material

    wanted = replace(config, **settings) if fresh or any(settings.values()) else config
    try:
        material(wanted)
    except MoorageError:
        if fresh:
            d.config_file.unlink(missing_ok=True)
        raise
    if wanted != config:
        d.save(wanted)
    return wanted


def _refuse_occupied(storage: str) -> None:
    """A new cluster on a filesystem blob storage another cluster uses (its markers, as
    moorage.storage.presence reads them) is refused before anything is made: the two
    collections would delete each other's blobs. Not read from S3 here (a start needs no
    round trip to it; a collection there still refuses); unreadable markers refuse nothing."""
    from moorage.storage import presence
    from moorage.storage.s3location import is_s3

    spec = storage_spec(storage)
    if is_s3(spec) or not (Path(spec) / "probe").is_dir():
        return  # S3, or a storage no replica has marked (this install makes it)
    try:
        why = presence.occupied(spec, "", "make a new cluster on it")
    except (OSError, MoorageError):
        return
    if why is not None:
        raise Failed(why)


def _create(d: DataDir, *args: Any) -> ReplicaConfig:
    """`create_replica` into `d`, or one line saying why its directory cannot be made."""
    if args[1] is not None:  # --storage
        _refuse_occupied(args[1])
    try:
        return create_replica(d, *args)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(d.path) else ""
        raise Failed(
            f"cannot make a replica in {d.path}: {exc.strerror or exc}{where}; choose a "
            "--data-dir this user may create and write"
        ) from None


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


_PASSWORD_FD = "MOORAGE_ADMIN_PASSWORD_FD"


def _reexec_with_password(password: str | None) -> None:
    """Run the replica just created in a fresh process (what `run` does on an existing data
    directory): the creation loaded cryptography, ~15 MiB the supervisor would keep for its
    whole life. The admin password goes through an inherited pipe, never the environment."""
    args = [sys.executable, "-m", "moorage", *sys.argv[1:]]
    env = {k: v for k, v in os.environ.items() if k != "MOORAGE_ADMIN_PASSWORD"}
    if password is not None:
        read, write = os.pipe()
        os.write(write, password.encode())  # far below a pipe's buffer
        os.close(write)
        os.set_inheritable(read, True)
        env[_PASSWORD_FD] = str(read)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


def _handed_password() -> str | None:
    """The password `_reexec_with_password` handed over (read once, the pipe closed)."""
    fd = os.environ.pop(_PASSWORD_FD, None)
    if fd is None or not fd.isdigit():
        return None
    try:
        return os.read(int(fd), 4096).decode() or None
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(int(fd))


@click.command(cls=Command)
@data_dir_option("Replica state.")
@click.option("--http-addr", default=None, help=f"Listen address (default {DEFAULT_HTTP_ADDR}).")
@storage_option
@ports_options
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=lambda: int(os.environ.get("MOORAGE_WORKERS", "1")),
    show_default="1 or MOORAGE_WORKERS",
    help="API worker processes.",
)
@transport_options
@log_format_option
def run(
    data_dir: str,
    http_addr: str | None,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    workers: int,
    tls: bool,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
    log_format: str | None,
) -> None:
    """Run a replica in the foreground; an empty DATA_DIR becomes a new one-replica cluster."""
    from moorage.server.process import run_replica

    setup_logging(log_format or "text")
    d = DataDir(data_dir)
    _reexec_with_absolute(d)
    http_addr = check_http_addr(http_addr)
    settings = {**transport_settings(tls, tls_cert, tls_key, insecure_http)}
    settings.update(log_setting(log_format))
    password = os.environ.get("MOORAGE_ADMIN_PASSWORD") or _handed_password() or None
    created = None
    fresh_start = not d.exists()
    d.refuse_incomplete_restore()
    if d.exists():
        config = d.load()
        check_same_settings(config, http_addr, storage, etcd_client_port, etcd_peer_port)
        config = _with_transport(d, config, settings, fresh=False)
    else:
        config = _create(d, http_addr, storage, etcd_client_port, etcd_peer_port)
        config = _with_transport(d, config, settings, fresh=True)
        if password is None:
            password = created = secrets.token_urlsafe(18)
    setup_logging(config.log_format, config.replica_id)
    if created is not None:
        message = (
            "Created a new one-replica cluster.\n"
            f"  admin user:     admin\n  admin password: {created}\n"
            "This password is shown once and stored only as a hash; "
            "set MOORAGE_ADMIN_PASSWORD to choose your own."
        )
        if config.log_format == "json":  # every line of a JSON log is an object
            logging.getLogger("moorage").warning(message)
        else:
            click.echo(message, err=True)
    try:
        if not fresh_start:
            run_replica(d, password, workers=workers)
        else:  # the new replica's keys were made here with cryptography: run it without
            _reexec_with_password(password)
    except MoorageError as exc:
        if config.log_format != "json":
            raise
        logging.getLogger("moorage").critical("%s", exc)
        raise SystemExit(1) from None


@click.command(cls=Command)
@data_dir_option("Replica state.")
@click.option("--http-addr", required=True, help="Listen address, HOST:PORT.")
@storage_option
@click.option(
    "--admin-password",
    default=None,
    envvar="MOORAGE_ADMIN_PASSWORD",
    help="Admin password (default: generated and printed once).",
)
@ports_options
@etcd_host_option
@transport_options
@log_format_option
@json_option
def install(
    data_dir: str,
    http_addr: str,
    storage: str | None,
    admin_password: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    etcd_host: str,
    tls: bool,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
    log_format: str | None,
    as_json: bool,
) -> None:
    """Create a new cluster with its first replica and start it in the background."""
    from moorage.cluster.lifecycle import start_background
    from moorage.pki.ca import fingerprint as ca_fingerprint
    from moorage.pki.files import TlsDir

    d = DataDir(data_dir)
    check_http_addr(http_addr)
    transport = transport_settings(tls, tls_cert, tls_key, insecure_http)
    transport.update(log_setting(log_format))
    generated = admin_password is None
    password = admin_password or secrets.token_urlsafe(18)
    config = _create(d, http_addr, storage, etcd_client_port, etcd_peer_port, etcd_host)
    # (D/tls/ must exist by now for a replica serving the cluster's certificate.)
    config = _with_transport(d, config, transport, fresh=True)
    pid = start_background(d, password).pid
    fingerprint = ca_fingerprint(TlsDir(d.path).read_ca())
    doc: dict[str, Any] = {
        "cluster_id": config.cluster_id,
        "replica_id": config.replica_id,
        "url": config.url,
        "data_dir": str(d.path),
        "storage": config.storage,
        "pid": pid,
        "admin_user": "admin",
        "ca_fingerprint": fingerprint,
    }
    if generated:
        doc["admin_password"] = password
    text = (
        f"Installed replica {config.replica_id} of new cluster {config.cluster_id}\n"
        f"  URL:        {config.url}\n  data dir:   {d.path}\n  storage:    {config.storage}\n"
        f"  cluster CA: {fingerprint}\n  admin user: admin"
    )
    if generated:
        text += f"\n  admin password (shown once, stored only as a hash): {password}"
    text += _join_hint(doc, config.url, password, fingerprint)
    emit(as_json, doc, text)


def _join_hint(doc: dict[str, Any], url: str, password: str, fingerprint: str) -> str:
    """A fresh 1 h join token and the whole join command (as `kubeadm init` prints one),
    added to `doc`; the text lines that show it."""
    from moorage.cli.join_tokens import create_token, join_command
    from moorage.recovery.client import AdminClient

    try:
        token = create_token(AdminClient([url], "admin", password), "1h")
    except MoorageError as exc:
        return f"\n  (no join token made: {exc}; 'moorage join-token create' makes one)"
    command = join_command(url, token["token"], fingerprint)
    doc.update(join_token=token["token"], join_token_expires_at=token["expires_at"])
    doc["join_command"] = command
    return (
        "\nTo add a replica, run on its host (the token is valid 1 h, for one join; "
        f"'moorage join-token create' makes more):\n  {command}"
    )


@click.command(cls=Command)
@click.option(
    "--data-dir",
    "data_dirs",
    required=True,
    multiple=True,
    callback=trusting_data_dirs,
    help="Replica state; several (comma-separated or repeated) start together.",
)
@log_format_option
@json_option
def start(data_dirs: tuple[str, ...], log_format: str | None, as_json: bool) -> None:
    """Start installed replicas in the background (a no-op for one that is running).

    Several data directories (the replicas of a stopped cluster) start together; the
    command returns once all are healthy. A single replica of a stopped cluster returns
    once its API answers (it cannot be healthy before enough of its peers run)."""
    from moorage.cluster.lifecycle import start_many

    paths = [p.strip() for arg in data_dirs for p in arg.split(",") if p.strip()]
    if not paths:
        raise click.UsageError("give at least one --data-dir")
    dirs = [DataDir(p) for p in paths]
    for d in dirs:
        d.refuse_incomplete_restore()
    if log_format is not None:  # kept in moorage.json: the next start logs so too
        for d in dirs:
            config = d.load()
            if config.log_format != log_format:
                d.save(replace(config, log_format=log_format))
    results = start_many(dirs)
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
    emit(as_json, doc, "\n".join(lines))


@click.command(cls=Command)
@data_dir_option("Replica state.")
@json_option
def stop(data_dir: str, as_json: bool) -> None:
    """Stop a replica and its etcd member; returns once they are gone and their ports free."""
    from moorage.cluster.lifecycle import stop as stop_replica

    d = DataDir(data_dir)
    if not d.exists():
        raise Failed(f"{d.path} is not a Moorage data directory (no moorage.json)")
    state = "stopped" if stop_replica(d) else "not running"
    emit(as_json, {"data_dir": str(d.path), "state": state}, f"{d.path}: {state}")


@click.command(cls=Command)
@data_dir_option("Replica state.")
@confirm_options
@json_option
def destroy(data_dir: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Stop a replica and delete its local state (never blob storage), without telling the
    cluster: remove it from the cluster first with 'moorage remove'. Prints what it will stop
    and delete, then asks (--yes, --dry-run)."""
    from moorage.cluster import destroy as destroying
    from moorage.cluster.lifecycle import destroy as destroy_replica

    d = DataDir(data_dir)
    if d.path.exists() and not d.exists() and not destroying.half_made(d):
        # Its run/, logs/, tls/ and etcd/ would be deleted: never in a folder that is not a
        # replica's (`--data-dir /` would take /run).
        raise Failed(
            f"{d.path} is not a Moorage data directory (no moorage.json, and it holds other "
            "things than a replica's folders): nothing was deleted"
        )
    plan, text = destroying.plan(d)
    if plan["deletes"] or plan["stops"] or dry_run:
        confirm("destroy", text, plan, yes=yes, dry_run=dry_run, as_json=as_json)
    removed = destroy_replica(d)
    emit(
        as_json,
        {"data_dir": str(d.path), "removed": removed},
        "\n".join(f"removed {p}" for p in removed) or f"{d.path}: nothing to remove",
    )


COMMANDS = [run, install, start, stop, destroy]
