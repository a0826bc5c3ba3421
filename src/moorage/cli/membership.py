"""Cluster membership: `join`, `remove`."""

from __future__ import annotations

from typing import Any

import click

from moorage.cli.base import Command, Failed, emit
from moorage.cli.confirm import confirm
from moorage.cli.options import (
    admin_client,
    admin_options,
    check_http_addr,
    confirm_options,
    data_dir_option,
    etcd_host_option,
    existing_urls,
    json_option,
    log_format_option,
    log_setting,
    ports_options,
    transport_options,
    transport_settings,
)
from moorage.config import DataDir
from moorage.errors import MoorageError


@click.command(cls=Command)
@admin_options
@data_dir_option("New replica.")
@click.option("--http-addr", required=True, help="Listen address of the new replica, HOST:PORT.")
@click.option(
    "--storage",
    default=None,
    help="Local path of the cluster's blob storage, if it differs from the cluster's own.",
)
@ports_options
@etcd_host_option
@click.option(
    "--unsafe-join",
    is_flag=True,
    help="Skip Moorage's checks (quorum, unhealthy replicas); etcd's own still apply.",
)
@click.option(
    "--token",
    envvar="MOORAGE_JOIN_TOKEN",
    default=None,
    help="A join token ('moorage join-token create'; or MOORAGE_JOIN_TOKEN): joins without "
    "the admin password; needs --ca-fingerprint.",
)
@transport_options
@log_format_option
@json_option
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
    token: str | None,
    tls: bool,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
    log_format: str | None,
    as_json: bool,
) -> None:
    """Add a replica to a running cluster; returns once it is a healthy voting member."""
    from moorage.recovery.join import RedirectMismatch
    from moorage.recovery.join import join as join_cluster

    pinned = click.get_current_context().meta.get("moorage.ca_fingerprint")
    check_http_addr(http_addr)
    transport = transport_settings(tls, tls_cert, tls_key, insecure_http)
    transport.update(log_setting(log_format))  # kept in moorage.json with the transport
    client = token_client(existing, token) if token else admin_client(existing, username, password)
    try:
        result = join_cluster(
            client,
            DataDir(data_dir),
            http_addr,
            storage,
            etcd_client_port,
            etcd_peer_port,
            unsafe_join,
            etcd_host=etcd_host,
            transport=transport,
            pinned=pinned,
        )
    except RedirectMismatch as exc:
        raise click.UsageError(str(exc)) from None
    emit(as_json, result.to_json(), result.text())


def token_client(existing: str, token: str) -> Any:
    """The client of a join with a token: the cluster's CA is pinned by --ca-fingerprint
    first (a wrong one is refused before the token leaves this host), then trusted."""
    from moorage.pki.trust import trust_ca_pem
    from moorage.recovery.client import fetch_ca
    from moorage.recovery.join_token_client import TokenClient

    pinned = click.get_current_context().meta.get("moorage.ca_fingerprint")
    if not pinned:
        raise click.UsageError(
            "--token needs --ca-fingerprint sha256:... (the cluster CA's fingerprint, which "
            "'moorage join-token create' and 'install' print): the CA is checked before the "
            "token is sent"
        )
    urls = existing_urls(existing)
    try:
        trust_ca_pem(fetch_ca(urls, pinned).pem)
    except MoorageError as exc:
        raise Failed(f"{exc}; the join token was not sent") from None
    return TokenClient(urls, token)


@click.command(cls=Command)
@admin_options
@click.option("--replica-id", required=True, help="Replica id(s) to remove, comma-separated.")
@click.option("--force", is_flag=True, help="Remove even if too few healthy voters would remain.")
@confirm_options
@json_option
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
    from moorage.recovery import remove as removal

    client = admin_client(existing, username, password)
    ids = removal.split_ids(replica_id)
    plan = removal.plan(client, ids, force, existing)
    confirm("remove", remove_text(plan), plan, yes=yes, dry_run=dry_run, as_json=as_json)
    result = removal.remove(client, ids, force)
    emit(as_json, result.to_json(), result.text())


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


COMMANDS = [join, remove]
