"""Options shared by several commands, each declared once."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from moorage.cli.confirm import confirm_options
from moorage.config import (
    DEFAULT_ETCD_CLIENT_PORT,
    DEFAULT_ETCD_HOST,
    DEFAULT_ETCD_PEER_PORT,
    LOG_FORMATS,
    split_addr,
)
from moorage.errors import MoorageError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "admin_client",
    "admin_options",
    "ca_file_option",
    "ca_fingerprint_option",
    "check_http_addr",
    "check_writable",
    "confirm_options",
    "data_dir_option",
    "etcd_host_option",
    "existing_urls",
    "json_option",
    "log_format_option",
    "log_setting",
    "passphrase",
    "passphrase_option",
    "password_option",
    "ports_options",
    "storage_option",
    "transport_options",
    "transport_settings",
    "trust_data_dirs",
    "trusting_data_dirs",
    "username_option",
]

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def trust_data_dirs(value: Any) -> None:
    """HTTPS clients of this command trust the cluster CA of each data directory given."""
    from moorage.pki.trust import trust_data_dir

    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        for part in str(v or "").split(","):
            if part.strip():
                trust_data_dir(part.strip())


def trusting_data_dirs(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback of a --data-dir option (one directory, a comma-separated list, or repeated)."""
    if value is not None:
        trust_data_dirs(value)
    return value


def data_dir_option(help: str) -> Callable[[F], F]:
    """`--data-dir DIR` (required, one directory); HTTPS clients trust its D/tls/ca.crt."""
    return click.option(
        "--data-dir",
        required=True,
        type=click.Path(file_okay=False),
        callback=trusting_data_dirs,
        help=help,
    )


def _trusting_ca_file(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value:
        import ssl

        from moorage.pki.trust import trust_ca_file

        try:
            ssl.create_default_context(cafile=value)
        except (OSError, ssl.SSLError) as exc:
            raise click.BadParameter(f"{value} is not a PEM CA certificate: {exc}") from None
        trust_ca_file(value)
    return value


ca_file_option = click.option(
    "--ca-file",
    envvar="MOORAGE_CA_FILE",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    callback=_trusting_ca_file,
    expose_value=False,
    is_eager=True,
    help="CA certificate (PEM) the cluster's HTTPS is verified against (or MOORAGE_CA_FILE); "
    "'moorage ca export' prints it. A --data-dir's own D/tls/ca.crt is trusted too.",
)


def _pinning(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value:
        value = value.strip().lower()
        if not value.startswith("sha256:") or len(value) != 71:
            raise click.BadParameter("expected sha256: and 64 hex digits")
        ctx.meta["moorage.ca_fingerprint"] = value
    return value


ca_fingerprint_option = click.option(
    "--ca-fingerprint",
    envvar="MOORAGE_CA_FINGERPRINT",
    default=None,
    callback=_pinning,
    expose_value=False,
    help="Pin the cluster CA by its fingerprint (sha256:..., 'moorage ca export --data-dir D' "
    "prints it): fetched from the cluster, checked, then trusted (or "
    "MOORAGE_CA_FINGERPRINT).",
)


log_format_option = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    envvar="MOORAGE_LOG_FORMAT",
    help="The replica's log lines: text (for people) or json (one object a line: time, "
    "level, replica, request_id, and per request method, route, status, bytes, latency_ms, "
    "user). Kept in its moorage.json (default text; or MOORAGE_LOG_FORMAT).",
)


def log_setting(log_format: str | None) -> dict[str, Any]:
    """The ReplicaConfig field of --log-format (nothing when it was not given)."""
    return {} if log_format is None else {"log_format": log_format}


def transport_options(fn: F) -> F:
    """`--tls`, `--tls-cert/--tls-key` and `--insecure-http` of a new replica (DESIGN §7)."""
    fn = click.option(
        "--insecure-http",
        is_flag=True,
        help="Serve plain HTTP on a non-loopback --http-addr (passwords cross the network "
        "in clear; only behind a TLS-terminating proxy or on a trusted network).",
    )(fn)
    fn = click.option(
        "--tls-key",
        default=None,
        type=click.Path(dir_okay=False, exists=True),
        help="Key (PEM, unencrypted) of --tls-cert.",
    )(fn)
    fn = click.option(
        "--tls-cert",
        default=None,
        type=click.Path(dir_okay=False, exists=True),
        help="Serve HTTPS with this certificate (PEM, leaf then chain) instead of the "
        "cluster's; re-read when the file changes.",
    )(fn)
    fn = click.option(
        "--tls",
        is_flag=True,
        help="Serve HTTPS on a loopback --http-addr too (a non-loopback one always does).",
    )(fn)
    return fn


def transport_settings(
    tls: bool, tls_cert: str | None, tls_key: str | None, insecure_http: bool
) -> dict[str, Any]:
    """The ReplicaConfig fields of the transport flags, or a usage error."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("give both --tls-cert and --tls-key, or neither")
    if insecure_http and (tls or tls_cert):
        raise click.UsageError("--insecure-http contradicts --tls/--tls-cert")
    return {
        "tls": tls,
        "tls_cert": str(Path(tls_cert).resolve()) if tls_cert else None,
        "tls_key": str(Path(tls_key).resolve()) if tls_key else None,
        "insecure_http": insecure_http,
    }


def ports_options(fn: F) -> F:
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


etcd_host_option = click.option(
    "--etcd-host",
    default=DEFAULT_ETCD_HOST,
    show_default=True,
    help="Address this replica's etcd member listens on and advertises to its peers "
    "(and to other replicas as a client URL); use the host's address on a multi-host "
    "cluster.",
)


def _storage_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """An s3:// location is checked (and made canonical) here: a bad one is a usage error."""
    from moorage.storage.s3location import is_s3, parse

    if value is None or not is_s3(value):
        return value
    try:
        return parse(value).url()
    except MoorageError as exc:
        raise click.BadParameter(str(exc)) from None


def storage_option(fn: F) -> F:
    return click.option(
        "--storage",
        default=None,
        callback=_storage_value,
        help="Blob storage: a directory (default DATA_DIR/blobs) or "
        "s3://BUCKET/PREFIX?endpoint=URL&region=R (credentials from the AWS environment).",
    )(fn)


def check_http_addr(value: str | None) -> str | None:
    """A HOST:PORT given on the command line, or a usage error."""
    if value is None:
        return None
    try:
        split_addr(value)
    except MoorageError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def username_option(help: str = "Admin user (or MOORAGE_USERNAME).") -> Callable[[F], F]:
    return click.option(
        "--username", envvar="MOORAGE_USERNAME", default="admin", show_default=True, help=help
    )


def password_option(help: str = "Admin password (or MOORAGE_PASSWORD).") -> Callable[[F], F]:
    return click.option("--password", envvar="MOORAGE_PASSWORD", default=None, help=help)


def admin_options(fn: F) -> F:
    """`--existing URLS --username U --password P` of the commands that talk to a cluster."""
    fn = password_option()(fn)
    fn = username_option()(fn)
    fn = ca_fingerprint_option(fn)
    fn = ca_file_option(fn)
    fn = click.option(
        "--existing",
        required=True,
        help="URL of a replica of the cluster; a comma-separated list is tried in turn.",
    )(fn)
    return fn


def existing_urls(existing: str) -> list[str]:
    """The replica URLs of `--existing`, each one a URL an HTTP client can use, or a usage
    error naming the one that is not (`http://[::1` would end in a traceback)."""
    import httpx

    from moorage.recovery.client import split_urls

    try:
        urls = split_urls(existing)
    except MoorageError as exc:
        raise click.UsageError(str(exc)) from None
    for url in urls:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise click.UsageError(
                f"--existing: {url[:200]!r} is not a valid URL ({exc}); give a replica's URL "
                "such as http://127.0.0.1:5000 or https://[::1]:5000"
            ) from None
        if parsed.userinfo:  # never used (nor shown back): the credentials come from options
            raise click.UsageError(
                "--existing: a URL carries no credentials; give them with --username and "
                "--password (or MOORAGE_USERNAME and MOORAGE_PASSWORD)"
            )
    return urls


def check_writable(path: str, option: str) -> None:
    """Refuse an output file that cannot be written before any work is done (a backup reads
    the whole metadata first): its directory must exist and take a new file."""
    import tempfile

    from moorage.cli.base import Failed

    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise Failed(
            f"cannot write {option} {path}: the directory {parent} does not exist; create it "
            "first or choose another path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name[:100]}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise Failed(
            f"cannot write {option} {path}: {exc.strerror or exc} in {parent}; choose a "
            "directory this user may create files in"
        ) from None
    os.close(fd)
    os.unlink(probe)


def admin_client(existing: str, username: str, password: str | None) -> Any:
    """The admin API client of `--existing`, or a usage error."""
    from moorage.pki.trust import trust_ca_pem
    from moorage.recovery.client import AdminClient, fetch_ca

    if password is None:
        raise click.UsageError("give the admin password with --password or MOORAGE_PASSWORD")
    urls = existing_urls(existing)
    ctx = click.get_current_context(silent=True)
    pinned = ctx.meta.get("moorage.ca_fingerprint") if ctx is not None else None
    if pinned:  # first contact: the CA the cluster serves must be the pinned one
        trust_ca_pem(fetch_ca(urls, pinned).pem)
    return AdminClient(urls, username, password)


passphrase_option = click.option(
    "--passphrase-file",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="File holding the backup passphrase (or MOORAGE_BACKUP_PASSPHRASE).",
)


def passphrase(passphrase_file: str | None) -> str | None:
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


def storage_arg(value: str) -> Path | str:
    """A `--storage` value: an s3:// location as given (a str), else a directory's path."""
    from moorage.storage.s3location import is_s3

    return value if is_s3(value) else Path(value)
