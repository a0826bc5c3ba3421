"""The one builder of a new replica's configuration, used by `install`, `run`, `join` and
`restore`: defaults for what was not given, the storage path made absolute, and the checks
that the data directory is free (or, for an existing replica, that the settings agree)."""

from __future__ import annotations

from pathlib import Path

from moorage.config import (
    DEFAULT_ETCD_CLIENT_PORT,
    DEFAULT_ETCD_HOST,
    DEFAULT_ETCD_PEER_PORT,
    DEFAULT_HTTP_ADDR,
    DataDir,
    ReplicaConfig,
    new_cluster_id,
    new_replica_id,
)
from moorage.errors import MoorageError
from moorage.storage.s3location import is_s3, parse


class ReplicaStateConflict(MoorageError):
    """The data directory already holds a replica (or one with other settings)."""


def storage_spec(storage: str | Path) -> str:
    """A `--storage` value as recorded: an S3 location canonical (ConfigError when it is
    not valid), a directory absolute."""
    if is_s3(str(storage)):
        return parse(str(storage)).url()
    return str(Path(storage).resolve())


def new_replica_config(
    data_dir: DataDir,
    http_addr: str | None = None,
    storage: str | Path | None = None,
    etcd_client_port: int | None = None,
    etcd_peer_port: int | None = None,
    *,
    cluster_id: str | None = None,
    replica_id: str | None = None,
    etcd_host: str | None = None,
) -> ReplicaConfig:
    """A new replica's configuration: a new cluster id and replica id unless given; blob
    storage defaults to DATA_DIR/blobs, and a given path is made absolute."""
    return ReplicaConfig(
        data_dir=str(data_dir.path),
        cluster_id=cluster_id or new_cluster_id(),
        replica_id=replica_id or new_replica_id(),
        http_addr=http_addr or DEFAULT_HTTP_ADDR,
        storage=storage_spec(storage) if storage else str(data_dir.path / "blobs"),
        etcd_client_port=etcd_client_port or DEFAULT_ETCD_CLIENT_PORT,
        etcd_peer_port=etcd_peer_port or DEFAULT_ETCD_PEER_PORT,
        etcd_host=etcd_host or DEFAULT_ETCD_HOST,
    )


def check_same_settings(
    config: ReplicaConfig,
    http_addr: str | None,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
) -> None:
    """`moorage run` on an existing replica: the flags given must agree with its moorage.json."""
    changed = {
        "--http-addr": http_addr and http_addr != config.http_addr,
        "--storage": storage and storage_spec(storage) != config.storage,
        "--etcd-client-port": etcd_client_port and etcd_client_port != config.etcd_client_port,
        "--etcd-peer-port": etcd_peer_port and etcd_peer_port != config.etcd_peer_port,
    }
    bad = [flag for flag, differs in changed.items() if differs]
    if bad:
        raise ReplicaStateConflict(
            f"{config.data_dir} already holds a replica with other settings for "
            f"{', '.join(bad)} (see its moorage.json); run without them or use another --data-dir"
        )


def create_replica(
    d: DataDir,
    http_addr: str | None,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    etcd_host: str | None = None,
) -> ReplicaConfig:
    """Write the configuration of a new one-replica cluster into an empty data directory."""
    from moorage.cluster.supervisor import check_http_addr
    from moorage.cluster.tls import create_cluster_tls

    if d.path.exists() and (d.etcd_dir.exists() or d.config_file.exists()):
        raise ReplicaStateConflict(
            f"{d.path} already holds replica state; use 'moorage start --data-dir {d.path}', "
            f"or 'moorage destroy --data-dir {d.path}' to start over"
        )
    config = new_replica_config(
        d, http_addr, storage, etcd_client_port, etcd_peer_port, etcd_host=etcd_host
    )
    check_http_addr(config)
    d.make_dirs()
    # The CA and the certificates first: the first etcd start already uses TLS, and a
    # directory with moorage.json but no tls/ reads as one made before TLS.
    create_cluster_tls(config)
    d.save(config)
    return config
