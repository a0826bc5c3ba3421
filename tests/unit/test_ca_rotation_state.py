"""cluster/ca_rotation.py without processes: the rotation record's phases in a store, what
each phase trusts and who signs, joins refused meanwhile, a second `begin` resuming, and the
CA bundle files (tests/test_ca_rotation.py runs the whole rotation on a real cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509

from moorage.cluster import ca_rotation as rot
from moorage.cluster import certs
from moorage.cluster import tls as ctls
from moorage.cluster.membership import Refused
from moorage.cluster.replica_config import new_replica_config
from moorage.config import DataDir
from moorage.meta.etcd import ClientTls, EtcdCluster, Member
from moorage.meta.memory import MemoryMetaStore
from moorage.pki import ca as pki
from moorage.pki.files import load_bundle


def test_phases_trust_sign_and_joins(tmp_path: Path) -> None:
    first = new_replica_config(DataDir(tmp_path / "r1"), http_addr="127.0.0.1:5000")
    old_fp = ctls.create_cluster_tls(first)
    store = MemoryMetaStore()

    async def csr_signed(renewal: bool) -> x509.Certificate:
        joiner = new_replica_config(DataDir(tmp_path / "rj"), http_addr="127.0.0.1:5001")
        answer = await ctls.sign_join(store, first, joiner.replica_id, ctls.new_csr(joiner),
                                      ["127.0.0.1"], renewal=renewal)  # fmt: skip
        return pki.load_cert(answer["certificate"].encode())

    async def scenario() -> None:
        await ctls.publish_ca(store, first)
        with pytest.raises(rot.RotationError, match="no CA rotation"):
            await rot.advance(store, "reissue")
        begun = await rot.begin(store, first)
        assert begun.phase == "trust"
        assert pki.fingerprint(begun.old_ca) == old_fp
        new_fp = pki.fingerprint(begun.new_ca)
        assert new_fp != old_fp
        # Never the same subject as the old CA: both sit in one trust bundle.
        assert begun.new_ca.subject != begun.old_ca.subject
        assert [pki.fingerprint(c) for c in begun.bundle()] == [old_fp, new_fp]
        again = await rot.begin(store, first)  # a second run resumes, it makes no third CA
        assert pki.fingerprint(again.new_ca) == new_fp
        # Both sealed keys open with the replica's secret (no plain key in the record).
        secret = ctls.tls_dir(first).read_secret()
        pki.unseal_ca_key(again.new_key, secret, again.new_ca)
        pki.unseal_ca_key(again.old_key, secret, again.old_ca)
        raw = await store.get_ca_rotation()
        assert raw is not None
        assert b"PRIVATE KEY" not in raw[0]

        # Joins are refused while it runs; a renewal is signed, by the old CA in `trust`.
        with pytest.raises(Refused, match="CA rotation is in progress"):
            await csr_signed(renewal=False)
        assert pki.issued_by(await csr_signed(renewal=True), begun.old_ca)
        with pytest.raises(rot.RotationError, match="phase trust"):
            await rot.advance(store, "drop")  # no skipping
        with pytest.raises(rot.RotationError, match="not finished"):
            await rot.finish(store)

        # Another replica applying a step holds the lock: this one waits its turn.
        assert await store.acquire_lock(rot.RESTART_LOCK, "other", 60, 0.0) is None
        with pytest.raises(rot.RotationError, match="replica other is applying"):
            await rot.apply_trust(store, first, "trust")
        await store.release_lock(rot.RESTART_LOCK, "other")

        switched = await rot.advance(store, "reissue")
        assert [pki.fingerprint(c) for c in switched.bundle()] == [new_fp, old_fp]
        stored = await store.get_ca()
        assert stored is not None
        assert pki.fingerprint(pki.load_cert(stored[0])) == new_fp  # the new CA signs
        assert pki.issued_by(await csr_signed(renewal=True), begun.new_ca)
        assert (await rot.advance(store, "reissue")).phase == "reissue"  # idempotent

        dropped = await rot.advance(store, "drop")
        assert [pki.fingerprint(c) for c in dropped.bundle()] == [new_fp]
        assert await rot.finish(store) == new_fp
        assert await store.get_ca_rotation() is None
        assert await rot.finish(store) == new_fp  # idempotent
        assert pki.issued_by(await csr_signed(renewal=False), begun.new_ca)  # joins again

    asyncio.run(scenario())


def test_an_unreadable_record_is_reported(tmp_path: Path) -> None:
    with pytest.raises(rot.RotationError, match="unreadable"):
        rot.Rotation.decode(b'{"phase": "trust"}', 1)
    with pytest.raises(rot.RotationError, match="unknown phase"):
        rot.Rotation.decode(b'{"phase": "explode"}', 1)


def test_the_bundle_file(tmp_path: Path) -> None:
    config = new_replica_config(DataDir(tmp_path / "r1"), http_addr="127.0.0.1:5000")
    ctls.create_cluster_tls(config)
    tls = ctls.tls_dir(config)
    old = tls.read_ca()
    new = pki.create_ca(config.cluster_id, generation="rotated test").cert
    assert tls.write_bundle([old, new])
    assert not tls.write_bundle([old, new])  # unchanged: not rewritten
    assert [pki.fingerprint(c) for c in tls.read_bundle()] == [pki.fingerprint(old),
                                                               pki.fingerprint(new)]  # fmt: skip
    assert tls.read_ca() == old  # the signing CA is the first
    tls.client_context()  # Python's ssl takes the bundle
    with pytest.raises(ValueError, match="PEM"):
        load_bundle(b"")


class _Members(EtcdCluster):
    """An etcd client stand-in: a fixed member list; reopen records what it was given."""

    def __init__(self, local: str, members: list[Member]) -> None:
        self.endpoints = [local]
        self.tls = ClientTls(b"", b"", b"")
        self._list = members
        self.reopened: list[list[str] | None] = []

    async def members(self, linearizable: bool = True) -> list[Member]:
        return self._list

    async def reopen(self, tls: ClientTls, endpoints: Sequence[str] | None = None) -> None:
        self.reopened.append(None if endpoints is None else list(endpoints))
        if endpoints is not None:
            self.endpoints = list(endpoints)


def test_workers_fail_over_between_members_and_drain_off_the_local_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first replica's configuration lists no other member: its etcd client learns them;
    the drain marker puts the local member last (acknowledged), its removal first again."""
    config = new_replica_config(DataDir(tmp_path / "r1"), http_addr="127.0.0.1:5000")
    DataDir(tmp_path / "r1").run_dir.mkdir(parents=True)
    local = config.etcd_client_url
    others = ["https://10.0.0.2:2379", "https://10.0.0.3:2379"]
    store = _Members(local, [
        Member(1, config.etcd_name, (), ("https://10.0.0.1:2379",), False),
        Member(2, "r2", (), (others[0],), False),
        Member(3, "r3", (), (others[1],), False),
        Member(4, "r4", (), ("https://10.0.0.4:2379",), True),  # a learner: not yet
    ])  # fmt: skip
    monkeypatch.setattr(certs, "RELOAD_INTERVAL", 0.01)
    marker, ack = certs.drain_marker(config), certs.drain_ack(config, os.getpid())

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(2000):
            if check():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"never: {store.reopened}")

    async def scenario() -> None:
        task = asyncio.create_task(certs.reloader(config, store))
        try:
            await until(lambda: store.endpoints == [local, *others])
            marker.write_text("x")
            await until(ack.exists)
            assert store.endpoints == [*others, local]
            marker.unlink()
            await until(lambda: store.endpoints == [local, *others])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert store.reopened == [[local, *others], [*others, local], [local, *others]]

    asyncio.run(scenario())
