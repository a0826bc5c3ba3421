"""`moorage` commands. Exit codes: 0 success, 1 operation failed, 2 bad usage."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click

from moorage import __version__
from moorage.config import (
    DEFAULT_ETCD_CLIENT_PORT,
    DEFAULT_ETCD_PEER_PORT,
    DEFAULT_HTTP_ADDR,
    DataDir,
    ReplicaConfig,
    new_cluster_id,
    new_replica_id,
    split_addr,
)
from moorage.errors import MoorageError


class Failed(click.ClickException):
    """An operation failed: message on stderr, exit code 1."""

    exit_code = 1


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("MOORAGE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
) -> ReplicaConfig:
    return ReplicaConfig(
        data_dir=str(data_dir.path),
        cluster_id=cluster_id or new_cluster_id(),
        replica_id=new_replica_id(),
        http_addr=http_addr or DEFAULT_HTTP_ADDR,
        storage=str(Path(storage).resolve()) if storage else str(data_dir.path / "blobs"),
        etcd_client_port=etcd_client_port or DEFAULT_ETCD_CLIENT_PORT,
        etcd_peer_port=etcd_peer_port or DEFAULT_ETCD_PEER_PORT,
    )


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
    from moorage.cluster.supervisor import check_http_addr, run_replica

    _setup_logging()
    d = DataDir(data_dir)
    _reexec_with_absolute(d)
    http_addr = _http_addr(http_addr)
    password = os.environ.get("MOORAGE_ADMIN_PASSWORD") or None
    try:
        if d.exists():
            config = d.load()
            changed = {
                "--http-addr": http_addr and http_addr != config.http_addr,
                "--storage": storage and str(Path(storage).resolve()) != config.storage,
                "--etcd-client-port": etcd_client_port
                and etcd_client_port != config.etcd_client_port,
                "--etcd-peer-port": etcd_peer_port and etcd_peer_port != config.etcd_peer_port,
            }
            bad = [flag for flag, differs in changed.items() if differs]
            if bad:
                raise Failed(
                    f"{d.path} already holds a replica with other settings for "
                    f"{', '.join(bad)} (see {d.config_file}); run without them or use "
                    "another --data-dir"
                )
        else:
            if d.path.exists() and any(p.name != "run" for p in d.path.iterdir()):
                leftovers = sorted(p.name for p in d.path.iterdir())
                if "etcd" in leftovers:
                    raise Failed(
                        f"{d.path} has etcd data but no {d.config_file.name}; it is not a "
                        "usable replica. Move it away or run 'moorage destroy' on it."
                    )
            config = new_replica_config(d, http_addr, storage, etcd_client_port, etcd_peer_port)
            check_http_addr(config)
            d.make_dirs()
            d.save(config)
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
