"""Fencing on the write path: once an emergency repair has written the fence marker, no
replica of the old epoch acknowledges a write, without waiting for its next health poll
(the partition test with a real old majority is in tests/test_partition_fence.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from harness.replica import Replica

from moorage.cluster import fence
from moorage.cluster.fence import FenceWatch, fence_grace, write_fence
from moorage.config import DataDir, ReplicaConfig
from moorage.meta.records import FenceRecord
from tests.cluster import OCI_MANIFEST
from tests.oci import oci_digest


def _config(tmp_path: Path, epoch: int = 1) -> ReplicaConfig:
    return ReplicaConfig(
        data_dir=str(tmp_path / "d"),
        cluster_id="c1",
        replica_id="aaaaaaaaaaaa",
        http_addr="127.0.0.1:1",
        storage=str(tmp_path),
        etcd_client_port=1,
        etcd_peer_port=2,
        epoch=epoch,
    )


def test_fence_watch_reads_the_marker_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = fence.read_fence

    def counting(storage: str | Path) -> FenceRecord | None:
        reads.append(str(storage))
        return real(storage)

    monkeypatch.setattr(fence, "read_fence", counting)
    watch = FenceWatch(_config(tmp_path, epoch=2))
    assert watch.check() is None  # no marker: nothing to read
    assert watch.check() is None
    assert reads == []
    write_fence(tmp_path, "c1", 2, "bbbbbbbbbbbb")  # this replica's own epoch
    assert watch.check() is None
    assert watch.check() is None
    assert len(reads) == 1  # read once, then one stat per check
    write_fence(tmp_path, "other-cluster", 9, "bbbbbbbbbbbb")
    assert watch.check() is None
    assert len(reads) == 2
    write_fence(tmp_path, "c1", 3, "bbbbbbbbbbbb")  # an emergency repair without this replica
    why = watch.check()
    assert why is not None
    assert "fenced" in why
    assert "epoch 3" in why
    assert "moorage destroy" in why
    # Once fenced, always fenced, even if the marker goes away.
    (tmp_path / fence.FENCE_FILE).unlink()
    assert watch.check() == why


def test_fence_watch_refuses_when_the_marker_cannot_be_checked(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    watch = FenceWatch(_config(blocked))  # stat of not-a-dir/fence.json: ENOTDIR
    with pytest.raises(NotADirectoryError):
        watch.check()


def test_fence_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOORAGE_FENCE_GRACE", raising=False)
    assert fence_grace(tmp_path) == 0.0  # a local filesystem sees the rename at once
    nfs = "rw,vers=4.2,acregmin=3,acregmax=60,acdirmin=30,acdirmax=60,hard,proto=tcp"
    monkeypatch.setattr(fence, "_mount_of", lambda path: ("nfs4", nfs))
    assert fence_grace(tmp_path) == 61.0
    monkeypatch.setattr(fence, "_mount_of", lambda path: ("nfs", "rw,acregmax=10,acdirmax=5"))
    assert fence_grace(tmp_path) == 11.0
    monkeypatch.setattr(fence, "_mount_of", lambda path: ("nfs", "rw,noac"))
    assert fence_grace(tmp_path) == 0.0
    zero = "rw,acregmin=0,acregmax=0,acdirmin=0,acdirmax=0"
    monkeypatch.setattr(fence, "_mount_of", lambda path: ("nfs4", zero))
    assert fence_grace(tmp_path) == 0.0
    monkeypatch.setenv("MOORAGE_FENCE_GRACE", "7.5")
    assert fence_grace(tmp_path) == 7.5


def _fence(replica: Replica) -> None:
    """What emergency repair does to the replicas it leaves out: a newer epoch marker."""
    config = DataDir(replica.data_dir).load()
    write_fence(config.storage, config.cluster_id, config.epoch + 1, "cccccccccccc")


def _assert_fenced(resp: object) -> None:
    import httpx

    assert isinstance(resp, httpx.Response)
    assert resp.status_code == 503, (resp.request.method, resp.request.url, resp.text)
    err = resp.json()["errors"][0]
    assert err["code"] == "UNAVAILABLE"
    assert "fenced" in err["message"]
    assert "moorage destroy" in err["message"]


def test_no_write_is_acknowledged_once_the_fence_is_written(fresh_replica: Replica) -> None:
    """Every kind of write that answers 201/202/204 is refused right after the marker is
    written (the health poll, every 2 s, has not seen it yet); the manifest whose commit
    the fence check refused is in the journal, so a repair that read it would replay it."""
    r = fresh_replica
    r.start()
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = os.urandom(3000)
    with r.client() as c:
        for blob in (config, layer):
            assert (
                c.post(
                    f"/v2/fence/app/blobs/uploads/?digest={oci_digest(blob)}", content=blob
                ).status_code
                == 201
            )
        started = c.post("/v2/fence/app/blobs/uploads/")
        assert started.status_code == 202
        upload = started.headers["location"]
        chunk = os.urandom(100)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": oci_digest(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": oci_digest(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        assert c.put("/v2/fence/app/manifests/before", content=manifest, headers={
            "Content-Type": OCI_MANIFEST
        }).status_code == 201  # fmt: skip

        _fence(r)
        # The manifest push: committed and journaled, but not acknowledged.
        _assert_fenced(
            c.put(
                "/v2/fence/app/manifests/after",
                content=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
        )
        entries = [
            json.loads(line)
            for f in (Path(DataDir(r.data_dir).load().storage) / "journal").glob("*.jsonl")
            for line in f.read_text().splitlines()
        ]
        assert any(e["op"] == "manifest" and "after" in e["tags"] for e in entries)
        # Every other write too, and the reads (the replica knows it is fenced now).
        blob = os.urandom(50)
        _assert_fenced(
            c.post(f"/v2/fence/app/blobs/uploads/?digest={oci_digest(blob)}", content=blob)
        )
        _assert_fenced(c.post("/v2/fence/app/blobs/uploads/"))
        _assert_fenced(c.patch(upload, content=chunk))
        _assert_fenced(c.put(f"{upload}?digest={oci_digest(chunk)}"))
        _assert_fenced(c.delete("/v2/fence/app/manifests/before"))
        _assert_fenced(c.delete(f"/v2/fence/app/blobs/{oci_digest(layer)}"))
        _assert_fenced(c.get("/v2/fence/app/manifests/before"))
        # The admin API refuses too, with the reason.
        for method, path, body in [
            ("GET", "/api/v0/cluster/status", None),
            ("GET", "/api/v0/cluster/backup", None),
            ("GET", "/api/v0/cluster/local-revision", None),
            ("POST", "/api/v0/cluster/join", {"replica_id": "d" * 12, "peer_url": "http://127.0.0.1:9"}),
        ]:  # fmt: skip
            resp = c.request(method, path, json=body)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.json()["code"] == "UNAVAILABLE"
            assert "fenced" in resp.json()["error"]
        ping = c.get("/_ping")
        assert ping.status_code == 503
        assert "fenced" in ping.json()["error"]
