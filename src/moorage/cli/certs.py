"""`moorage certs status` / `certs rotate`: the cluster's certificates (DESIGN.md §7)."""

from __future__ import annotations

import sys
from typing import Any

import click

from moorage.cli.base import Failed, Group, emit
from moorage.cli.confirm import confirm, confirm_options
from moorage.cli.options import (
    admin_client,
    admin_options,
    ca_file_option,
    ca_fingerprint_option,
    json_option,
    password_option,
    trusting_data_dirs,
    username_option,
)
from moorage.config import DataDir


@click.group(cls=Group)
def certs() -> None:
    """The cluster's certificates: expiry, renewal."""


@certs.command("status")
@click.option("--existing", default=None, help="URL of a replica (comma-separated list).")
@username_option()
@password_option()
@ca_file_option
@ca_fingerprint_option
@click.option(
    "--data-dir",
    "data_dirs",
    default=None,
    callback=trusting_data_dirs,
    help="Without --existing: the certificates in these data directories' D/tls/ (no "
    "network; comma-separated).",
)
@json_option
def status(
    existing: str | None,
    username: str,
    password: str | None,
    data_dirs: str | None,
    as_json: bool,
) -> None:
    """Every replica's certificate and the CA: names, expiry, days left, fingerprint, and
    ok / expiring (under 30 days) / expired. Exit 1 if a replica did not answer."""
    from moorage.cluster.certs import local_report
    from moorage.recovery.certs import gather, rows, rows_text

    if existing is not None:
        client = admin_client(existing, username, password)
        reports = gather(client)
    elif data_dirs:
        reports = [local_report(DataDir(p).load()) for p in data_dirs.split(",") if p.strip()]
    else:
        raise click.UsageError("give --existing URL (the whole cluster) or --data-dir D")
    table = rows(reports)
    bad = [r for r in table if r["state"] != "ok"]
    head = "certificates: all ok" if not bad else f"certificates: {len(bad)} need attention"
    emit(as_json, {"certificates": table}, "\n".join([head, *rows_text(table)]))
    if any(r["state"] == "unreachable" for r in table):
        sys.exit(1)


@certs.command("rotate")
@admin_options
@click.option(
    "--ca", "new_ca", is_flag=True, help="Roll to a new CA (not available in this version)."
)
@confirm_options
@json_option
def rotate(
    existing: str,
    username: str,
    password: str | None,
    new_ca: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Renew every replica's certificate, one replica at a time, without downtime: each makes
    a new key and CSR, the cluster CA signs it, its etcd member and HTTPS listener serve the
    new certificate on new connections (open ones finish), then the next replica."""
    from moorage.recovery.certs import gather, renew_one

    if new_ca:
        raise Failed(
            "certs rotate --ca (a new cluster CA) is not available in this version; "
            "'moorage certs rotate' renews the replica certificates under the current CA"
        )
    client = admin_client(existing, username, password)
    reports = gather(client)
    missing = [r for r in reports if "replica" not in r]
    if missing:
        raise Failed(
            "not every replica answered, and each must renew its own certificate: "
            + "; ".join(f"{r['replica_id']} ({r['url']}): {r['error']}" for r in missing)
            + ". Bring it back (moorage status says how) or remove it, then run this again"
        )
    plan: dict[str, Any] = {
        "replicas": [
            {
                "replica_id": r["replica_id"],
                "url": r["url"],
                "fingerprint": r["replica"].get("fingerprint"),
                "not_after": r["replica"].get("not_after"),
            }
            for r in reports
        ]
    }
    text = "\n".join(
        [f"certs rotate will renew {len(reports)} replica certificate(s), one at a time:"]
        + [
            f"  {p['replica_id']}  {p['url']}  now {p['fingerprint']} (until {p['not_after']})"
            for p in plan["replicas"]
        ]
        + ["kept: the cluster CA; pushes and pulls keep working throughout"]
    )
    confirm("certs rotate", text, plan, yes=yes, dry_run=dry_run, as_json=as_json)
    done = []
    for p in plan["replicas"]:
        if not as_json:
            click.echo(f"renewing {p['replica_id']} ...")
        try:
            done.append(renew_one(client, p["replica_id"], p["url"]))
        except Exception as exc:
            finished = ", ".join(d["replica_id"] for d in done) or "none"
            raise Failed(
                f"{exc}. Renewed so far: {finished}; the others keep their valid "
                "certificates. Fix the cause and run 'moorage certs rotate' again"
            ) from None
        if not as_json:
            click.echo(f"  {done[-1]['old']} -> {done[-1]['new']}")
    emit(as_json, {"renewed": done}, f"renewed {len(done)} replica certificate(s)")


COMMANDS = [certs]
