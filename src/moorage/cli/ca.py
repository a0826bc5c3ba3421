"""`moorage ca export`: the cluster CA certificate, for clients' trust stores (DESIGN.md §7)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from moorage.cli.base import Failed, Group, emit
from moorage.cli.options import (
    ca_file_option,
    check_writable,
    existing_urls,
    json_option,
    trusting_data_dirs,
)
from moorage.config import DataDir
from moorage.errors import MoorageError


@click.group(cls=Group)
def ca() -> None:
    """The cluster's certificate authority."""


@ca.command("export")
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    callback=trusting_data_dirs,
    help="A replica's data directory: its D/tls/ca.crt (no network).",
)
@click.option(
    "--existing",
    default=None,
    help="URL of a replica (comma-separated list tried in turn): GET /api/v0/cluster/ca.",
)
@click.option(
    "--ca-fingerprint",
    default=None,
    help="With --existing: refuse a CA whose fingerprint (sha256:..., as 'ca export "
    "--data-dir' prints it on a replica's host) differs; this makes a first contact safe.",
)
@ca_file_option
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write it to FILE.")
@json_option
def export(
    data_dir: str | None,
    existing: str | None,
    ca_fingerprint: str | None,
    out: str | None,
    as_json: bool,
) -> None:
    """Print (or write with --out) the cluster CA certificate in PEM.

    Clients trust the registry with it: docker in /etc/docker/certs.d/HOST:PORT/ca.crt,
    podman/skopeo in /etc/containers/certs.d/HOST:PORT/ca.crt, oras with --ca-file."""
    from moorage.pki import TlsDir, fingerprint
    from moorage.pki.ca import load_cert
    from moorage.recovery.client import fetch_ca

    if (data_dir is None) == (existing is None):
        raise click.UsageError("give --data-dir D (a replica's host) or --existing URL")
    if out is not None:
        check_writable(out, "--out")
    warning = None
    if data_dir is not None:
        tls = TlsDir(DataDir(data_dir).path)
        try:
            pem = tls.ca_cert.read_bytes()
            cert = load_cert(pem)
        except OSError:
            raise Failed(
                f"{tls.ca_cert} is missing: {data_dir} is not a replica's data directory, "
                "or it predates TLS"
            ) from None
        except ValueError:
            raise Failed(f"{tls.ca_cert} is not a PEM certificate") from None
        found = fingerprint(cert)
        if ca_fingerprint is not None and found != ca_fingerprint.strip().lower():
            raise Failed(f"{tls.ca_cert} is CA {found}, not the expected {ca_fingerprint}")
        source, trust = str(tls.ca_cert), "local"
    else:
        assert existing is not None
        try:
            fetched = fetch_ca(existing_urls(existing), ca_fingerprint)
        except MoorageError as exc:
            raise Failed(str(exc)) from None
        pem, found, source, trust = fetched.pem, fetched.fingerprint, fetched.url, fetched.trust
        if trust == "unverified":
            warning = (
                f"warning: fetched over a connection that could not be verified; check that "
                f"{found} is the fingerprint 'moorage ca export --data-dir D' prints on a "
                "replica's host (or pass --ca-fingerprint) before trusting it"
            )
        elif fetched.serves_cluster_cert is False:
            warning = f"note: {fetched.url} serves a certificate of another CA (--tls-cert)"
    if out is not None:
        try:
            Path(out).write_bytes(pem)
        except OSError as exc:
            raise Failed(f"cannot write --out {out}: {exc.strerror or exc}") from None
    if warning:
        click.echo(warning, err=True)
    doc = {"fingerprint": found, "source": source, "trust": trust, "out": out}
    if as_json:
        doc["pem"] = pem.decode()
        emit(True, doc, "")
    elif out is not None:
        click.echo(f"wrote CA {found} to {out}")
    else:
        sys.stdout.write(pem.decode())
        click.echo(f"# fingerprint {found}", err=True)


COMMANDS = [ca]
