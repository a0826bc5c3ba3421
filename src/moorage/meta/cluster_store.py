"""The cluster's own records, typed, beside the registry's (`MetaStore`).

    replicas     one ReplicaRecord per replica (written when it registers)
    heartbeats   one HeartbeatRecord per live replica, lease-backed: it disappears when
                 its replica stops renewing
    locks        lease-backed LockRecords (one join at a time)
    the epoch    in the ClusterRecord; emergency repair and restore rewrite it
    snapshots    every registry and cluster record as of one revision (backups), and
                 the registry records written back (restores), as typed entries

Callers (cluster/, recovery/, api/) see records only: the key layout stays in meta/keys.py.
A backend adds four lease primitives to the MetaStore ones; everything else is written
once, here, on top of them (etcd in production, a dict in the contract tests).
Every read is bounded (pages of at most STORE_PAGE keys).
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from moorage.errors import RecordCorrupt
from moorage.meta import keys
from moorage.meta.base import STORE_PAGE, Delete, Guard, MetaStore, Op, Put, op_batches
from moorage.meta.join_records import JoinClaimRecord, JoinTokenRecord
from moorage.meta.records import ClusterRecord, HeartbeatRecord, LockRecord, ReplicaRecord
from moorage.meta.snapshot import RESTORED_KINDS, Entry, Snapshot, from_kv, to_kvs

log = logging.getLogger("moorage.meta")
_R = TypeVar("_R")


def _readable(decode: Callable[[bytes], _R], values: list[bytes]) -> list[_R]:
    """The records that decode: one corrupt record (a forged or half-written key) is
    skipped with a warning, never allowed to hide the others (a replica's heartbeat
    among them, which would make status call a healthy replica unhealthy)."""
    out: list[_R] = []
    for value in values:
        try:
            out.append(decode(value))
        except RecordCorrupt as exc:
            log.warning("skipped a corrupt record: %s", exc)
    return out


#: The lock one join at a time holds.
JOIN_LOCK = "join"
_LOAD_BATCH = 256


class ClusterStore(MetaStore):
    # -- primitives each backend provides (leases) ----------------------------------------
    @abstractmethod
    async def grant_lease(self, ttl: int) -> int:
        """A lease of `ttl` seconds: keys written with it disappear when it ends."""

    @abstractmethod
    async def revoke_lease(self, lease: int) -> None: ...

    @abstractmethod
    async def put_with_lease(self, key: bytes, value: bytes, lease: int) -> None: ...

    @abstractmethod
    async def _create_leased(
        self, key: bytes, value: bytes, lease: int, guards: Sequence[Guard] = ()
    ) -> bool:
        """Put `key` with `lease` only if it does not exist and `guards` hold (as in `_txn`);
        True if this call created it."""

    async def _values(self, prefix: bytes, local: bool = False) -> list[bytes]:
        """Every value under a small prefix (replicas, heartbeats), read in bounded pages;
        `local`: this member's own copy (answers without quorum; etcd overrides this)."""
        out: list[bytes] = []
        async for page in self._scan(prefix, keys.prefix_end(prefix)):
            out += [kv.value for kv in page]
        return out

    async def _dump(self, prefix: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Every key under `prefix` as of one revision, read in bounded pages (etcd reads
        each page at the first page's revision)."""
        revision = await self.revision()
        out: list[tuple[bytes, bytes]] = []
        async for page in self._scan(prefix, keys.prefix_end(prefix)):
            out += [(kv.key, kv.value) for kv in page]
        return revision, out

    # -- replicas and their heartbeats -----------------------------------------------------
    async def replicas(self, local: bool = False) -> list[ReplicaRecord]:
        return _readable(ReplicaRecord.decode, await self._values(keys.REPLICAS, local))

    async def get_replica(self, replica_id: str) -> ReplicaRecord | None:
        kv = await self._get(keys.replica(replica_id))
        return ReplicaRecord.decode(kv.value) if kv else None

    async def put_replica(self, record: ReplicaRecord) -> None:
        await self._txn([], [Put(keys.replica(record.replica_id), record.encode())])

    async def heartbeats(self, local: bool = False) -> list[HeartbeatRecord]:
        return _readable(HeartbeatRecord.decode, await self._values(keys.HEARTBEATS, local))

    async def put_heartbeat(self, record: HeartbeatRecord, lease: int) -> None:
        await self.put_with_lease(keys.heartbeat(record.replica_id), record.encode(), lease)

    async def forget_replica(self, replica_id: str) -> None:
        """Delete a replica's record and its heartbeat (it left the cluster)."""
        ops: list[Op] = [Delete(keys.replica(replica_id)), Delete(keys.heartbeat(replica_id))]
        await self._txn([], ops)

    # -- locks ---------------------------------------------------------------------------
    async def acquire_lock(self, name: str, owner: str, ttl: int, at: float) -> LockRecord | None:
        """Take the lock `name` for `ttl` seconds: None when `owner` holds it now (taken
        by this call or by an earlier one of the same owner), else the holder's record."""
        key = keys.lock(name)
        lease = await self.grant_lease(ttl)
        if await self._create_leased(key, LockRecord(owner, at).encode(), lease):
            return None
        await self.revoke_lease(lease)
        holder = await self.get_lock(name)
        if holder is not None and holder.owner == owner:
            return None
        return holder or LockRecord("unknown", 0.0)

    async def hold_lock(
        self, name: str, owner: str, ttl: int, at: float
    ) -> tuple[int, Guard] | LockRecord:
        """Take the lock `name` on a lease of `ttl` seconds that the caller renews
        (`keep_alive`) and revokes when done: (the lease, a guard that holds while the lock
        is still this one: for the caller's transactions), else the holder's record."""
        key = keys.lock(name)
        lease = await self.grant_lease(ttl)
        if await self._create_leased(key, LockRecord(owner, at).encode(), lease):
            kv = await self._get(key)
            if kv is not None:
                return lease, (key, kv.mod_revision)
        await self.revoke_lease(lease)
        return await self.get_lock(name) or LockRecord("unknown", 0.0)

    async def keep_alive(self, lease: int) -> bool:
        """Renew a lease; False when it has ended. (Leases here end only when revoked.)"""
        return True

    async def get_lock(self, name: str) -> LockRecord | None:
        kv = await self._get(keys.lock(name))
        if kv is None:
            return None
        try:
            return LockRecord.decode(kv.value)
        except RecordCorrupt:
            return LockRecord("unreadable", 0.0)

    async def release_lock(self, name: str, owner: str | None = None) -> None:
        """Release the lock `name` if `owner` holds it (any holder when `owner` is None)."""
        holder = await self.get_lock(name)
        if holder is not None and (owner is None or holder.owner == owner):
            await self._txn([], [Delete(keys.lock(name))])

    # -- the cluster CA (moorage.cluster.tls) ------------------------------------------------
    async def get_ca(self) -> tuple[bytes, bytes] | None:
        """(CA certificate PEM, sealed CA key), or None when the cluster has none stored."""
        cert, sealed = await self._get(keys.PKI_CA_CERT), await self._get(keys.PKI_CA_KEY)
        if cert is None or sealed is None:
            return None
        return cert.value, sealed.value

    async def create_ca(self, cert_pem: bytes, sealed_key: bytes) -> bool:
        """Store the cluster CA unless one is stored already (False then)."""
        guards: list[Guard] = [(keys.PKI_CA_CERT, 0), (keys.PKI_CA_KEY, 0)]
        ops: list[Op] = [Put(keys.PKI_CA_CERT, cert_pem), Put(keys.PKI_CA_KEY, sealed_key)]
        return await self._txn(guards, ops)

    async def get_ca_rotation(self) -> tuple[bytes, int] | None:
        """The CA rotation record and its mod revision, or None when none is in progress."""
        kv = await self._get(keys.PKI_CA_ROTATION)
        return None if kv is None else (kv.value, kv.mod_revision)

    async def put_ca_rotation(
        self, record: bytes | None, expect: int, ca: tuple[bytes, bytes] | None = None
    ) -> bool:
        """Write (None: delete) the CA rotation record if its mod revision is still `expect`
        (0: absent); with `ca`, make (certificate PEM, sealed key) the cluster CA in the same
        transaction. False when the record changed meanwhile."""
        ops: list[Op] = [
            Delete(keys.PKI_CA_ROTATION) if record is None else Put(keys.PKI_CA_ROTATION, record)
        ]
        if ca is not None:
            ops += [Put(keys.PKI_CA_CERT, ca[0]), Put(keys.PKI_CA_KEY, ca[1])]
        return await self._txn([(keys.PKI_CA_ROTATION, expect)], ops)

    # -- join tokens (moorage.cluster.join_tokens) -------------------------------------------
    async def join_tokens(self, limit: int) -> list[tuple[str, JoinTokenRecord]]:
        """At most `limit` unused tokens: (hash, record); one bounded read."""
        end = keys.prefix_end(keys.JOIN_TOKENS)
        kvs, _ = await self._range(keys.JOIN_TOKENS, end, limit=min(limit, STORE_PAGE))
        out = []
        for kv in kvs:
            try:
                out.append(
                    (kv.key[len(keys.JOIN_TOKENS) :].decode(), JoinTokenRecord.decode(kv.value))
                )
            except (RecordCorrupt, UnicodeDecodeError) as exc:
                log.warning("skipped a corrupt join token record: %s", exc)
        return out

    async def create_join_token(self, digest: str, record: JoinTokenRecord, ttl: int) -> bool:
        lease = await self.grant_lease(ttl)
        if await self._create_leased(keys.join_token(digest), record.encode(), lease):
            return True
        await self.revoke_lease(lease)
        return False

    async def get_join_token(self, digest: str) -> JoinTokenRecord | None:
        kv = await self._get(keys.join_token(digest))
        return JoinTokenRecord.decode(kv.value) if kv else None

    async def get_join_claim(self, digest: str) -> JoinClaimRecord | None:
        kv = await self._get(keys.join_claim(digest))
        return JoinClaimRecord.decode(kv.value) if kv else None

    async def claim_join_token(self, digest: str, claim: JoinClaimRecord, ttl: int) -> bool:
        """Record the one join that uses the token `digest` (True if this call did: exactly
        one of concurrent calls wins), then delete the token (the claim alone says it is used;
        its lease outlives the token's)."""
        lease = await self.grant_lease(ttl)
        if not await self._create_leased(keys.join_claim(digest), claim.encode(), lease):
            await self.revoke_lease(lease)
            return False
        await self._txn([], [Delete(keys.join_token(digest))])
        return True

    async def revoke_join_token(self, digest_or_id: str) -> bool:
        """Delete a token (by its hash, or by its id: a unique prefix of it) and its claim."""
        found: list[str] = []
        for prefix in (keys.JOIN_TOKENS, keys.JOIN_CLAIMS):
            start = prefix + digest_or_id.encode()
            kvs, _ = await self._range(start, keys.prefix_end(start), limit=2, keys_only=True)
            found += [kv.key[len(prefix) :].decode(errors="replace") for kv in kvs]
        digests = set(found)
        if len(digests) != 1:
            return False
        digest = digests.pop()
        ops: list[Op] = [Delete(keys.join_token(digest)), Delete(keys.join_claim(digest))]
        await self._txn([], ops)
        return True

    # -- the epoch -------------------------------------------------------------------------
    async def put_cluster(self, record: ClusterRecord) -> None:
        """Rewrite the cluster record (a new epoch, a restored cluster's new id)."""
        await self._txn([], [Put(keys.CLUSTER, record.encode())])

    # -- the journal's trimming (moorage.cluster.journal_trim) ----------------------------
    async def last_backup(self) -> tuple[int, int] | None:
        """(epoch, revision) of the newest backup recorded, or None."""
        kv = await self._get(keys.JOURNAL_BACKUP)
        return _epoch_revision(kv.value) if kv else None

    async def record_backup(self, epoch: int, revision: int) -> tuple[int, int]:
        """Record a backup written whole at (epoch, revision), unless a newer one is; the
        newest recorded (compare-and-swap: two backups finishing at once keep the newer)."""
        while True:
            kv = await self._get(keys.JOURNAL_BACKUP)
            old = _epoch_revision(kv.value) if kv else None
            if old is not None and old >= (epoch, revision):
                return old
            value = json.dumps({"epoch": epoch, "revision": revision}).encode()
            guard = (keys.JOURNAL_BACKUP, kv.mod_revision if kv else 0)
            if await self._txn([guard], [Put(keys.JOURNAL_BACKUP, value)]):
                return (epoch, revision)

    async def journal_trim(self) -> dict[str, object] | None:
        """What the last journal trim wrote (`put_journal_trim`), or None."""
        kv = await self._get(keys.JOURNAL_TRIM)
        if kv is None:
            return None
        try:
            doc = json.loads(kv.value)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    async def put_journal_trim(self, doc: dict[str, object]) -> None:
        await self._txn([], [Put(keys.JOURNAL_TRIM, json.dumps(doc).encode())])

    # -- snapshots -------------------------------------------------------------------------
    async def snapshot(self) -> tuple[Snapshot, list[str]]:
        """Every registry and cluster record as of one revision, and one line per record
        left out because it is invalid (heartbeats and locks are not part of it)."""
        revision, kvs = await self._dump(keys.ROOT)
        entries: list[Entry] = []
        invalid: list[str] = []
        for key, value in kvs:
            try:
                entry = from_kv(key, value)
            except RecordCorrupt as exc:
                invalid.append(f"record {_show(key.decode(errors='replace'))}: {exc}")
                continue
            if entry is not None:
                entries.append(entry)
        return Snapshot(revision, entries), invalid

    async def snapshot_page(
        self, revision: int, after: bytes | None, limit: int = STORE_PAGE
    ) -> tuple[Snapshot, list[str], bytes | None]:
        """One bounded page of `snapshot`: the records after key `after` (from the first
        with None) as of `revision` (0: now, the answer says which), the invalid ones left
        out, and the key to go on after (None on the last page). StoreUnavailable once etcd
        compacted `revision` away (a backup slower than the history etcd keeps)."""
        start = keys.ROOT if after is None else after + b"\x00"
        if not start.startswith(keys.ROOT):
            raise ValueError("after is not a cursor of this endpoint")
        current = await self.revision()
        if revision > current:
            raise ValueError(f"revision {revision} is newer than the store's ({current})")
        revision = revision if revision > 0 else current
        kvs, more = await self._range(start, keys.prefix_end(keys.ROOT), limit, revision=revision)
        entries: list[Entry] = []
        invalid: list[str] = []
        for kv in kvs:
            try:
                entry = from_kv(kv.key, kv.value)
            except RecordCorrupt as exc:
                invalid.append(f"record {_show(kv.key.decode(errors='replace'))}: {exc}")
                continue
            if entry is not None:
                entries.append(entry)
        following = kvs[-1].key if more and kvs else None
        return Snapshot(revision, entries), invalid, following

    async def load(self, entries: Iterable[Entry]) -> int:
        """Write the registry records among `entries` (a restore), in transactions bounded
        by count and bytes; the number written."""
        ops: list[Op] = [
            Put(key, value) for e in entries if e.kind in RESTORED_KINDS for key, value in to_kvs(e)
        ]
        for batch in op_batches(ops, _LOAD_BATCH):
            await self._txn([], batch)
        return len(ops)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _epoch_revision(value: bytes) -> tuple[int, int] | None:
    try:
        doc = json.loads(value)
        epoch, revision = doc["epoch"], doc["revision"]
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(epoch, int) and isinstance(revision, int):
        return (epoch, revision)
    return None
