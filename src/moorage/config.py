"""A replica's settings: `D/moorage.json`, written once when the replica is created."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from moorage.errors import ConfigError

CONFIG_NAME = "moorage.json"
DEFAULT_HTTP_ADDR = "127.0.0.1:5000"
DEFAULT_ETCD_CLIENT_PORT = 12379
DEFAULT_ETCD_PEER_PORT = 12380
DEFAULT_ETCD_HOST = "127.0.0.1"
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    data_dir: str
    cluster_id: str
    replica_id: str
    http_addr: str
    storage: str
    etcd_client_port: int
    etcd_peer_port: int
    etcd_host: str = DEFAULT_ETCD_HOST
    version: int = 1
    # How this replica's etcd member first starts: "new" (a new cluster) or "existing"
    # (joined: `etcd_initial_cluster` lists the members it joins). Ignored once etcd has data.
    etcd_cluster_state: str = "new"
    etcd_initial_cluster: str | None = None
    # Client URLs of the other members, tried when the local member does not answer.
    etcd_endpoints: tuple[str, ...] = ()
    # Bumped by emergency repair; a replica older than the fence in blob storage is stale.
    epoch: int = 1
    # Transport (DESIGN.md §7). `tls`: HTTPS on a loopback address too (a non-loopback address
    # always serves HTTPS); `tls_cert`/`tls_key`: the operator's own certificate and key instead
    # of the cluster's (D/tls/replica.crt); `insecure_http`: plain HTTP on a non-loopback address.
    tls: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure_http: bool = False
    # The log lines of the replica's processes: "text" (for people) or "json" (one object a
    # line, moorage.logs); `--log-format` of run, start, install, join and restore sets it.
    log_format: str = "text"

    @property
    def https(self) -> bool:
        """Whether the API serves HTTPS (the server refuses to start when it should but has no
        certificate)."""
        if self.tls or self.tls_cert is not None:
            return True
        return not self.insecure_http and not is_loopback(self.http_host)

    @property
    def http_host(self) -> str:
        return split_addr(self.http_addr)[0]

    @property
    def http_port(self) -> int:
        return split_addr(self.http_addr)[1]

    @property
    def url(self) -> str:
        host = self.http_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        scheme = "https" if self.https else "http"
        return f"{scheme}://{host}:{self.http_port}"

    # etcd speaks mutual TLS only, on both planes (DESIGN.md §7): every URL is https.
    @property
    def etcd_client_url(self) -> str:
        return f"https://127.0.0.1:{self.etcd_client_port}"

    @property
    def etcd_advertise_client_url(self) -> str:
        """The client URL other replicas use: on `etcd_host` (loopback by default)."""
        return f"https://{self.etcd_host}:{self.etcd_client_port}"

    @property
    def etcd_peer_url(self) -> str:
        return f"https://{self.etcd_host}:{self.etcd_peer_port}"

    @property
    def store_endpoints(self) -> list[str]:
        """The local member first, then the others."""
        others = [e for e in self.etcd_endpoints if e != self.etcd_client_url]
        return [self.etcd_client_url, *others]

    @property
    def etcd_name(self) -> str:
        return self.replica_id

    @property
    def transport(self) -> dict[str, bool | str | None]:
        """The transport settings (`--tls`, `--tls-cert/--tls-key`, `--insecure-http`), as
        keyword arguments of `dataclasses.replace`: a repaired replica keeps them."""
        return {
            "tls": self.tls,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
            "insecure_http": self.insecure_http,
        }

    def with_http_addr(self, http_addr: str) -> ReplicaConfig:
        return replace(self, http_addr=http_addr)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; 0.0.0.0 (every interface) and other names are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]") or "127.0.0.1", int(port)


class DataDir:
    """The layout of a replica's data directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def etcd_dir(self) -> Path:
        return self.path / "etcd"

    @property
    def tls_dir(self) -> Path:
        """`D/tls/`: the replica's key, certificates and cluster secret (moorage.pki.files)."""
        return self.path / "tls"

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    @property
    def restoring(self) -> Path:
        """`D/restore-incomplete`: there while a restore fills the directory (one interrupted
        leaves a partial store, which no start may serve: moorage.recovery.restore)."""
        return self.path / "restore-incomplete"

    def refuse_incomplete_restore(self) -> None:
        if self.restoring.exists():
            raise ConfigError(
                f"{self.path} holds a restore that was interrupted: its store is partial. "
                f"Clear it with 'moorage destroy --data-dir {self.path}', then restore again"
            )

    @property
    def log_dir(self) -> Path:
        return self.path / "logs"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "replica.lock"

    def exists(self) -> bool:
        return self.config_file.exists()

    def load(self) -> ReplicaConfig:
        try:
            raw = json.loads(self.config_file.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{self.path} is not a Moorage data directory (no {CONFIG_NAME})"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{self.config_file} is corrupt: {exc}") from None
        raw["data_dir"] = str(self.path)
        raw["etcd_endpoints"] = tuple(raw.get("etcd_endpoints", ()))
        if "insecure_http" not in raw and isinstance(raw.get("http_addr"), str):
            # Written before HTTPS existed: such a replica served plain HTTP; it keeps doing
            # so (as with --insecure-http) rather than failing to start after an upgrade.
            with contextlib.suppress(ConfigError):
                raw["insecure_http"] = not is_loopback(split_addr(raw["http_addr"])[0])
        if raw.get("log_format", "text") not in LOG_FORMATS:
            raise ConfigError(
                f"{self.config_file}: log_format {raw['log_format']!r} is not one of "
                f"{', '.join(LOG_FORMATS)}"
            )
        try:
            return ReplicaConfig(**raw)
        except TypeError as exc:
            raise ConfigError(f"{self.config_file} has unexpected fields: {exc}") from None

    def save(self, config: ReplicaConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(config), indent=2) + "\n")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self.config_file)

    def make_dirs(self) -> None:
        for d in (self.path, self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)


def new_cluster_id() -> str:
    return uuid.uuid4().hex


def new_replica_id() -> str:
    return secrets.token_hex(6)
