"""The store contract: the same cases against the in-memory store and a real etcd.

What the layers above rely on (registry records, the cluster's own typed records, leases,
locks, snapshots and their restore) behaves the same on both backends, so unit tests that
use `MemoryMetaStore` say something about production. One etcd process serves the module;
each case starts from an empty keyspace.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from harness.etcd import start_etcd_member

from moorage.cluster.fence import read_fence, write_fence
from moorage.errors import RecordCorrupt
from moorage.meta import keys, usage
from moorage.meta.base import Delete, Put
from moorage.meta.cluster_store import JOIN_LOCK, ClusterStore
from moorage.meta.etcd import ClientTls, EtcdCluster
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import (
    ClusterRecord,
    FenceRecord,
    HeartbeatRecord,
    ManifestRecord,
    ReplicaRecord,
    UserRecord,
)
from moorage.meta.referrers import referrers_page
from moorage.meta.snapshot import (
    BlobLinkEntry,
    ClusterEntry,
    Entry,
    ManifestEntry,
    ReferrerEntry,
    RepoEntry,
    TagEntry,
    UserEntry,
    from_json,
    from_kv,
    to_json,
    to_kv,
)
from moorage.oci import mediatypes as mt

D = [f"sha256:{c * 64}" for c in "0123456789abcdef"]
Case = Callable[[ClusterStore], Awaitable[None]]


@pytest.fixture(scope="module")
def etcd_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ClientTls]]:
    """One etcd member started exactly as a replica starts its own (the same limits, mutual
    TLS with a new cluster's certificates): its client URL and the client's TLS material."""
    with start_etcd_member(tmp_path_factory.mktemp("contract-etcd")) as member:
        yield member


@pytest.fixture(params=["memory", "etcd"])
def run(request: pytest.FixtureRequest) -> Callable[[Case], None]:
    """Runs a case against a fresh store of the parametrised backend."""
    member = request.getfixturevalue("etcd_member") if request.param == "etcd" else None

    def go(case: Case) -> None:
        async def main() -> None:
            store: ClusterStore
            if request.param == "memory":
                store = MemoryMetaStore()
            else:
                assert member is not None
                store = EtcdCluster([member[0]], tls=member[1])
                await _wipe(store)
            try:
                await case(store)
            finally:
                await store.close()

        asyncio.run(main())

    return go


async def _wipe(store: ClusterStore) -> None:
    for prefix in (keys.ROOT, keys.LAST_CHANGE):
        end = keys.prefix_end(prefix)
        while True:
            kvs, _ = await store._range(prefix, end, limit=500, keys_only=True)
            if not kvs:
                break
            await store._txn([], [Delete(kv.key) for kv in kvs])


def _manifest(digest: str, subject: str | None = None) -> ManifestRecord:
    return ManifestRecord(digest, mt.OCI_MANIFEST, 100, subject=subject)


async def _populate(store: ClusterStore) -> None:
    assert await store.create_cluster(ClusterRecord("c1"))
    assert await store.create_user(UserRecord("admin", "$argon2id$hash"))
    for repo in ("a/b", "c"):
        await store.link_blob(repo, D[1], 10)
        await store.link_blob(repo, D[2], 20)
        missing = await store.put_manifest(repo, _manifest(D[3]), ["v1", "v2"], blobs=[D[1], D[2]])
        assert missing == []
    referrer = {"mediaType": mt.OCI_MANIFEST, "digest": D[4], "size": 50}
    assert await store.put_manifest("a/b", _manifest(D[4], D[3]), [], referrer, [D[1]]) == []


# -- registry records -------------------------------------------------------------------


def test_registry_records(run: Callable[[Case], None]) -> None:
    async def case(store: ClusterStore) -> None:
        assert await store.get_cluster() is None
        await _populate(store)
        assert not await store.create_cluster(ClusterRecord("c2"))
        assert (await store.get_cluster()) == ClusterRecord("c1", 1)
        assert not await store.create_user(UserRecord("admin", "other"))
        assert (await store.get_user("admin")) == UserRecord("admin", "$argon2id$hash")
        assert await store.blob_size("a/b", D[1]) == 10
        assert await store.missing_blobs("a/b", [D[1], D[5], D[5]]) == [D[5]]
        assert await store.put_manifest("a/b", _manifest(D[6]), ["x"], blobs=[D[7]]) == [D[7]]
        assert await store.get_tag("a/b", "x") is None
        assert (await store.get_tag("a/b", "v1")).digest == D[3]  # type: ignore[union-attr]
        assert await store.list_repos(None, None) == (["a/b", "c"], False)
        assert await store.list_tags("a/b", 1, None) == (["v1"], True)
        assert await store.list_tags("a/b", 5, "v1") == (["v2"], False)
        assert await referrers_page(store, "a/b", D[3], 10, 1 << 20) == (
            [{"mediaType": mt.OCI_MANIFEST, "digest": D[4], "size": 50}],
            None,
        )
        assert await store.delete_tag("a/b", "v2")
        assert not await store.delete_tag("a/b", "v2")
        assert await store.delete_manifest("c", D[3])
        assert await store.list_tags("c", None, None) == ([], False)
        assert await store.get_manifest("c", D[3]) is None
        assert await store.unlink_blob("c", D[1])
        assert await store.blob_size("c", D[1]) is None

    run(case)


def test_many_tags_are_read_in_pages(run: Callable[[Case], None]) -> None:
    async def case(store: ClusterStore) -> None:
        await store.link_blob("p", D[1], 1)
        tags = [f"t{i:04d}" for i in range(1200)]  # more than one page of STORE_PAGE
        assert await store.put_manifest("p", _manifest(D[3]), tags, blobs=[D[1]]) == []
        listed, more = await store.list_tags("p", None, None)
        assert listed == tags
        assert not more
        assert await store.delete_manifest("p", D[3])
        assert await store.list_tags("p", None, None) == ([], False)

    run(case)


# -- the cluster's own records ------------------------------------------------------------


def _replica(rid: str) -> ReplicaRecord:
    return ReplicaRecord(rid, f"http://{rid}", "http://peer", "http://client", "/d", "/s", 1.0)


def test_replicas_and_heartbeats(run: Callable[[Case], None]) -> None:
    async def case(store: ClusterStore) -> None:
        assert await store.replicas() == []
        await store.put_replica(_replica("r1"))
        await store.put_replica(_replica("r2"))
        assert await store.get_replica("r1") == _replica("r1")
        assert await store.get_replica("r9") is None
        for local in (False, True):
            assert [r.replica_id for r in await store.replicas(local=local)] == ["r1", "r2"]
        first = await store.grant_lease(10)
        await store.put_heartbeat(HeartbeatRecord("r1", "u", 1.0, True), first)
        # Renewed with a fresh lease, then the old one revoked: the heartbeat stays.
        second = await store.grant_lease(10)
        await store.put_heartbeat(HeartbeatRecord("r1", "u", 2.0, False, "disk"), second)
        await store.revoke_lease(first)
        beats = await store.heartbeats(local=True)
        assert beats == [HeartbeatRecord("r1", "u", 2.0, False, "disk")]
        await store.revoke_lease(second)  # the replica stopped renewing
        assert await store.heartbeats() == []
        lease = await store.grant_lease(10)
        await store.put_heartbeat(HeartbeatRecord("r2", "u", 3.0, True), lease)
        await store.forget_replica("r2")
        assert [r.replica_id for r in await store.replicas()] == ["r1"]
        assert await store.heartbeats() == []
        await store.revoke_lease(lease)

    run(case)


def test_locks(run: Callable[[Case], None]) -> None:
    async def case(store: ClusterStore) -> None:
        assert await store.get_lock(JOIN_LOCK) is None
        assert await store.acquire_lock(JOIN_LOCK, "a", 30, 1.0) is None
        assert await store.acquire_lock(JOIN_LOCK, "a", 30, 2.0) is None  # a retried call
        holder = await store.acquire_lock(JOIN_LOCK, "b", 30, 3.0)
        assert holder is not None
        assert holder.owner == "a"
        assert holder.at == 1.0
        await store.release_lock(JOIN_LOCK, owner="b")  # not b's: kept
        assert (await store.get_lock(JOIN_LOCK)).owner == "a"  # type: ignore[union-attr]
        await store.release_lock(JOIN_LOCK, owner="a")
        assert await store.acquire_lock(JOIN_LOCK, "b", 30, 4.0) is None
        await store.release_lock(JOIN_LOCK)  # any holder (emergency repair)
        assert await store.get_lock(JOIN_LOCK) is None

    run(case)


def test_epoch(run: Callable[[Case], None]) -> None:
    async def case(store: ClusterStore) -> None:
        await store.create_cluster(ClusterRecord("c1"))
        await store.put_cluster(ClusterRecord("c1", 7))
        assert await store.get_cluster() == ClusterRecord("c1", 7)

    run(case)


# -- snapshots and their restore -----------------------------------------------------------


def test_snapshot_holds_typed_records_and_loads_back(run: Callable[[Case], None]) -> None:
    async def case(store: ClusterStore) -> None:
        await _populate(store)
        await store.put_replica(_replica("r1"))
        lease = await store.grant_lease(10)
        await store.put_heartbeat(HeartbeatRecord("r1", "u", 1.0, True), lease)
        await store.acquire_lock(JOIN_LOCK, "r1", 30, 1.0)
        forged = keys.tag("a/b", "evil")
        await store._txn([], [Put(forged, b'{"digest":"sha256:../../etc","size":1}')])
        snapshot, invalid = await store.snapshot()
        assert snapshot.revision > 0
        assert len(invalid) == 1
        assert "a/b@evil" in invalid[0]
        kinds = sorted(e.kind for e in snapshot.entries)
        assert kinds == sorted(
            ["cluster", "user", "replica", "referrer"]
            + ["repository", "tag", "tag", "manifest", "blob_link", "blob_link"] * 2
            + ["manifest"]
        )  # no heartbeat, no lock, not the forged tag
        tags = {  # without the push time a push records
            (e.repo, e.tag): dataclasses.replace(e.record, pushed_at=None)
            for e in snapshot.entries
            if isinstance(e, TagEntry)
        }
        assert tags[("a/b", "v1")] == _manifest(D[3]).tag_record()
        assert all(isinstance(e.record.pushed_at, float) for e in snapshot.entries
                   if isinstance(e, TagEntry))  # fmt: skip
        # Through JSON (the admin API, the archive) and back: the same records.
        again = [from_json(to_json(e)) for e in snapshot.entries]
        assert again == snapshot.entries
        await store.revoke_lease(lease)
        # Restore into an empty store: the registry records, not the cluster's.
        await _wipe(store) if isinstance(store, EtcdCluster) else None
        target: ClusterStore = store if isinstance(store, EtcdCluster) else MemoryMetaStore()
        written = await target.load(again)
        assert written == len(again) - 2  # the cluster and replica records stay behind
        assert await target.get_cluster() is None
        assert await target.replicas() == []
        assert (await target.get_tag("c", "v2")).digest == D[3]  # type: ignore[union-attr]
        assert await referrers_page(target, "a/b", D[3], 10, 1 << 20) == (
            [{"mediaType": mt.OCI_MANIFEST, "digest": D[4], "size": 50}],
            None,
        )
        restored, _ = await target.snapshot()
        assert sorted(map(repr, restored.entries)) == sorted(
            repr(e) for e in again if e.kind not in ("cluster", "replica")
        )
        if target is not store:
            await target.close()

    run(case)


# -- keys and typed entries (no store) ---------------------------------------------------


def test_every_entry_has_one_key_and_back() -> None:
    entries: list[Entry] = [
        RepoEntry("a/b"),
        TagEntry("a/b", "v1", _manifest(D[3]).tag_record()),
        ManifestEntry("a/b", _manifest(D[3], D[2])),
        BlobLinkEntry("a/b", D[1], 5),
        ReferrerEntry("a/b", D[2], {"mediaType": mt.OCI_MANIFEST, "digest": D[3], "size": 1}),
        UserEntry(UserRecord("admin", "h")),
        ClusterEntry(ClusterRecord("c1", 3)),
    ]
    for entry in entries:
        key, value = to_kv(entry)
        assert from_kv(key, value) == entry
        assert from_json(to_json(entry)) == entry
    assert keys.parse(keys.heartbeat("r1")) == ("heartbeat", ("r1",))
    assert keys.parse(b"/elsewhere") is None
    assert from_kv(keys.heartbeat("r1"), b"{}") is None


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": "tag", "repo": "a/b", "tag": "../x", "digest": D[1],
         "media_type": mt.OCI_MANIFEST, "size": 1},
        {"kind": "repository", "repo": "../../etc"},
        {"kind": "blob_link", "repo": "a", "digest": "sha256:../../y", "size": 1},
        {"kind": "manifest", "repo": "a", "digest": D[1], "media_type": "text/html", "size": 1},
        {"kind": "referrer", "repo": "a", "subject": D[1], "descriptor": {"digest": "x"}},
        {"kind": "user", "name": "a\n", "password_hash": "h"},
        {"kind": "nothing"},
        {"kind": "blob_link", "repo": "a", "digest": D[1], "size": 1, "extra": 1},
        ["not", "an", "object"],
    ],
)  # fmt: skip
def test_forged_entries_are_refused(doc: object) -> None:
    with pytest.raises(RecordCorrupt):
        from_json(doc)


def test_fence_marker_is_a_typed_record(tmp_path: Path) -> None:
    write_fence(tmp_path, "c1", 3, "r1")
    marker = read_fence(tmp_path)
    assert marker is not None
    assert (marker.cluster_id, marker.epoch, marker.by_replica) == ("c1", 3, "r1")
    # A marker written by earlier code (json.dump, spaces) or with more fields still fences.
    old = b'{"cluster_id": "c1", "epoch": 4, "by_replica": "r2", "at": 1.5, "more": [1]}'
    assert FenceRecord.decode(old) == FenceRecord("c1", 4, "r2", 1.5)
    for junk in (b"", b"[]", b'{"cluster_id": "c1"}', b'{"cluster_id": 1, "epoch": 2}', b"\xff"):
        assert FenceRecord.decode(junk) is None


def test_a_refused_transaction_answers_the_reads_a_retry_needs(run: Callable[[Case], None]) -> None:
    """etcd answers them in the refused request itself (a blob link's retry reads nothing
    more, meta/usage.py); other stores read them after it."""

    async def case(store: ClusterStore) -> None:
        r, x, y = keys.repo("r"), keys.repo("x"), keys.repo("y")
        assert await store._txn([], [Put(r, b"{}")])
        held, found = await usage._txn_else_get(store, [(r, 0)], [Put(x, b"{}")], [r, y])
        assert not held
        assert [kv.value if kv else None for kv in found] == [b"{}", None]
        assert await store._get(x) is None
        assert await usage._txn_else_get(store, [(y, 0)], [Put(y, b"{}")], [y]) == (True, [])
        assert await store._get(y) is not None

    run(case)
