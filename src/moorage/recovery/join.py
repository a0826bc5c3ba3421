"""`moorage join`: add a replica to a running cluster, safely.

1. the new replica must see the cluster's blob storage (a probe written through the
   cluster is read back from the local path);
2. the cluster adds the new etcd member as a learner, under a lock in etcd (refusing while
   quorum is lost or unhealthy replicas were not removed, unless --unsafe-join);
3. the replica starts with the existing membership, and once its member has caught up the
   cluster promotes it to a voter;
4. join returns when the replica answers `/_ping` and its heartbeat is recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.cluster.etcd_process import etcd_answers
from moorage.cluster.lifecycle import LifecycleError, start_background, stop, wait_healthy
from moorage.cluster.replica_config import new_replica_config
from moorage.cluster.status_report import status_answer
from moorage.cluster.supervisor import check_http_addr
from moorage.cluster.tls import new_csr, write_join_answer
from moorage.config import (
    DEFAULT_ETCD_HOST,
    DataDir,
    new_replica_id,
)
from moorage.errors import ConfigError, MoorageError
from moorage.pki.ca import fingerprint, load_cert
from moorage.pki.files import TlsDir
from moorage.recovery.client import AdminClient
from moorage.storage.control import local_probe_seen, probe_seen
from moorage.storage.s3location import is_s3, parse

JOIN_PATIENCE = 300.0


class JoinFailed(MoorageError):
    pass


def check_storage(client: AdminClient, storage: str | None) -> str:
    probe = client.call("POST", "/api/v0/cluster/storage-probe", {}, idempotent=True)
    remote = str(probe["storage"])
    if is_s3(storage or "") or (not storage and is_s3(remote)):
        return _check_s3(storage or remote, remote, str(probe["path"]), str(probe["content"]))
    local = Path(storage).resolve() if storage else Path(remote)
    if not local_probe_seen(local, str(probe["path"]), str(probe["content"])):
        raise JoinFailed(
            f"this host does not see the cluster's blob storage at {local} (a probe file the "
            f"cluster wrote to {probe['storage']}/{probe['path']} is not there); mount the "
            "same storage here and pass its local path with --storage"
        )
    return str(local)


class RedirectMismatch(ConfigError):
    """The joining replica's `redirect` is not the cluster's (a usage error: exit 2)."""


def _check_s3(spec: str, remote: str, name: str, content: str) -> str:
    """The canonical URL of S3 storage `spec` if this host reads the cluster's probe there
    and pulls by redirect as the cluster does (`redirect` is one setting per cluster: the
    value `install` recorded, which every replica that joined since has too)."""
    location = parse(spec)  # ConfigError saying what is wrong with --storage
    ours = parse(remote).redirect
    if location.redirect != ours:
        agreed = dataclasses.replace(location, redirect=ours).url()
        raise RedirectMismatch(
            f"--storage says redirect={_onoff(location.redirect)} but the cluster's replicas "
            f"use redirect={_onoff(ours)} (pulls by redirect are one setting per cluster); "
            f"join with --storage '{agreed}'"
        )
    if not probe_seen(spec, name, content):
        raise JoinFailed(
            f"this host does not see the cluster's blob storage at {location} (a probe object "
            f"the cluster wrote to {remote} {name} is not there, or cannot be read with this "
            "host's credentials); pass the cluster's bucket and prefix with --storage and set "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for it"
        )
    return location.url()


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


@dataclass(frozen=True)
class JoinResult:
    """The replica that joined: its ids, URL, data directory and the storage path it uses."""

    cluster_id: str
    replica_id: str
    url: str
    data_dir: str
    storage: str
    member_id: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        return (
            f"Replica {self.replica_id} joined cluster {self.cluster_id}\n"
            f"  URL:      {self.url}\n  data dir: {self.data_dir}\n  storage:  {self.storage}"
        )


def join(
    client: AdminClient,
    data_dir: DataDir,
    http_addr: str,
    storage: str | None,
    etcd_client_port: int | None,
    etcd_peer_port: int | None,
    unsafe: bool,
    replica_id: str | None = None,
    etcd_host: str = DEFAULT_ETCD_HOST,
    transport: Mapping[str, Any] | None = None,
    pinned: str | None = None,
) -> JoinResult:
    """Join a new replica; with `replica_id`, rejoin that replica in place (repair). With
    `pinned` (a CA fingerprint), the cluster's answer must carry that CA."""
    if data_dir.etcd_dir.exists() or (replica_id is None and data_dir.exists()):
        raise JoinFailed(
            f"{data_dir.path} already holds replica state; join needs an empty data directory "
            f"(moorage destroy --data-dir {data_dir.path} clears it)"
        )
    replica_id = replica_id or new_replica_id()
    # storage is the cluster's, set below; the draft serves the address checks and peer URL
    draft = new_replica_config(
        data_dir,
        http_addr,
        None,
        etcd_client_port,
        etcd_peer_port,
        cluster_id="-",
        replica_id=replica_id,
        etcd_host=etcd_host,
    )
    draft = dataclasses.replace(draft, **(transport or {}))  # --tls, --tls-cert, ...
    check_http_addr(draft)
    local_storage = check_storage(client, storage)
    # The key is made here and stays here: only the CSR travels (D/tls/ is wiped on failure
    # with the rest of the directory by `moorage destroy`, which the error message names).
    csr = new_csr(draft)
    answer = client.call_retrying(
        "POST",
        "/api/v0/cluster/join",
        {
            "replica_id": replica_id,
            "peer_url": draft.etcd_peer_url,
            "http_addr": draft.http_addr,
            "csr": csr,
            "unsafe": unsafe,
        },
        JOIN_PATIENCE,
        # The same replica id and CSR again: a join the first replica took is answered as
        # such by the next (as before the admin client stopped re-sending POSTs).
        idempotent=True,
    )
    if pinned is not None:
        _check_pinned(answer, pinned)
    config = dataclasses.replace(
        draft,
        cluster_id=answer["cluster_id"],
        storage=local_storage,
        etcd_cluster_state="existing",
        etcd_initial_cluster=answer["initial_cluster"],
        etcd_endpoints=tuple(answer["etcd_endpoints"]),
        epoch=int(answer.get("epoch", 1)),
    )
    try:
        write_join_answer(config, answer)  # before the first etcd start: TLS from the start
        data_dir.make_dirs()
        data_dir.save(config)
        proc = start_background(data_dir, wait=False)
        deadline = time.monotonic() + 60
        context = TlsDir(data_dir.path).client_context()
        while not etcd_answers(config.etcd_client_port, context):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LifecycleError(
                    f"the new replica's etcd did not start; see {data_dir.log_dir}/etcd.log"
                )
            time.sleep(0.2)
        client.call_retrying(
            "POST",
            "/api/v0/cluster/join/promote",
            {"member_id": answer["member_id"]},
            180,
            idempotent=True,
        )
        wait_healthy(config, proc, data_dir.log_dir / "moorage.log", 120)
        _wait_heartbeat(client, replica_id)
    except BaseException as exc:
        with contextlib.suppress(MoorageError):
            stop(data_dir)
        raise JoinFailed(
            f"join of replica {replica_id} failed: {exc}. To clean up: moorage remove "
            f"--existing {client.urls[0]} --replica-id {replica_id} --force; moorage destroy "
            f"--data-dir {data_dir.path}"
        ) from None
    finally:
        with contextlib.suppress(MoorageError):
            client.call(
                "POST", "/api/v0/cluster/join/end", {"replica_id": replica_id}, idempotent=True
            )
    return JoinResult(
        cluster_id=config.cluster_id,
        replica_id=replica_id,
        url=config.url,
        data_dir=str(data_dir.path),
        storage=local_storage,
        member_id=answer["member_id"],
    )


def _check_pinned(answer: Mapping[str, Any], pinned: str) -> None:
    """The join answer's CA is the pinned one (nothing is written before this check)."""
    try:
        found = fingerprint(load_cert(str(answer["ca"]).encode()))
    except (KeyError, ValueError):
        found = "none"
    if found != pinned.strip().lower():
        raise JoinFailed(
            f"the cluster answered the join with CA {found}, not the pinned {pinned}: refusing "
            "it (the wrong cluster, or someone in between); its learner may have been added: "
            "an admin removes it with moorage remove"
        )


def _wait_heartbeat(client: AdminClient, replica_id: str, patience: float = 60) -> None:
    deadline = time.monotonic() + patience
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = status_answer(client.call("GET", "/api/v0/cluster/status"))
        row = next((r for r in doc["replicas"] if r["id"] == replica_id), {})
        if row.get("healthy"):
            return
        time.sleep(0.5)
    raise JoinFailed(f"replica {replica_id} did not report healthy: {row.get('error')}")
