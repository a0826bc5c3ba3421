"""One etcd member started exactly as a replica starts its own (the same limits, mutual TLS
with a new cluster's certificates), for tests and benchmarks of the store on its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from harness.process import free_port
from moorage.cluster.etcd_process import EtcdProcess
from moorage.cluster.tls import client_tls, create_cluster_tls
from moorage.config import DataDir, ReplicaConfig, new_cluster_id, new_replica_id
from moorage.meta.etcd import ClientTls


@contextlib.contextmanager
def start_etcd_member(root: Path) -> Iterator[tuple[str, ClientTls]]:
    """Start the member under `root`; yield its client URL and the client's TLS material;
    stop it at the end."""
    data_dir = DataDir(root / "d")
    data_dir.make_dirs()
    config = ReplicaConfig(
        data_dir=str(data_dir.path),
        cluster_id=new_cluster_id(),
        replica_id=new_replica_id(),
        http_addr=f"127.0.0.1:{free_port()}",
        storage=str(root / "s"),
        etcd_client_port=free_port(),
        etcd_peer_port=free_port(),
    )
    create_cluster_tls(config)
    etcd = EtcdProcess(data_dir, config)
    etcd.start()
    try:
        etcd.wait_ready(timeout=60)
        yield config.etcd_client_url, client_tls(config)
    finally:
        etcd.stop()
