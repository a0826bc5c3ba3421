"""The etcd backend: the only module that imports the etcd client.

Requests go to the local member first; the gRPC target lists every member's client
address so the channel fails over, and every call has a deadline so a store without
quorum answers StoreUnavailable instead of hanging a request forever.

Message sizes are bounded on purpose: etcd accepts requests up to 8 MiB
(--max-request-bytes, cluster/etcd_process.py), so no single value is larger; the client
sends up to that and receives up to `MAX_RECEIVE_BYTES`. Every read asks for at most
STORE_PAGE keys, and a page that would still be too large (big referrer annotations) is
asked again with a quarter of the keys, down to one, which always fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from moorage.errors import StoreUnavailable, own_cancellation
from moorage.meta import keys
from moorage.meta.base import (
    KV,
    LAST_REVISION,
    STORE_PAGE,
    Guard,
    MetaStore,
    Op,
)
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.etcd_leader import SETTLED_SECONDS, LeaderCheck, Peers
from moorage.meta.etcd_members import TRANSIENT
from moorage.meta.etcd_members import ClientTls as ClientTls
from moorage.meta.etcd_members import Member as Member
from moorage.meta.etcd_members import MemberStatus as MemberStatus
from moorage.meta.etcd_retry import attempts, election
from moorage.meta.etcd_txn import TokenLease, compares, fence, token_key, txn_request

DEFAULT_TIMEOUT = 5.0
_UNAVAILABLE = "the metadata store (etcd) is unavailable"
LINEARIZABLE_READ_TIMEOUT = 1.0
WRITE_ATTEMPT_TIMEOUT = 1.5
WRITE_BUDGET = 8.0
LOCAL_READ_WINDOW = 3.0
_READS_PER_TXN = 128
#: etcd's --max-request-bytes: the largest request it accepts, hence the largest value.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: A response of one key always fits; larger pages are split (see _bounded).
MAX_RECEIVE_BYTES = 4 * MAX_REQUEST_BYTES
#: What members' certificates are checked against (= pki.CLUSTER_SAN; `ipv4:a,b` is no name).
TLS_SERVER_NAME = "moorage-cluster"
_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": MAX_RECEIVE_BYTES,
    "grpc.max_send_message_length": MAX_REQUEST_BYTES + 64 * 1024,
}


def _target(endpoints: Sequence[str]) -> tuple[str, int]:
    """aetcd joins host and port; a multi-address gRPC target fails over between members."""
    hosts = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
    last_host, _, last_port = hosts[-1].rpartition(":")
    if len(hosts) == 1:
        return last_host, int(last_port)
    return "ipv4:" + ",".join([*hosts[:-1], last_host]), int(last_port)


class _TlsClient(aetcd.Client):  # type: ignore[misc]
    """aetcd 1.0.0 has no TLS parameter: a secure channel with the stubs this module calls."""

    def __init__(self, host: str, port: int, tls: ClientTls, options: dict[str, Any]) -> None:
        override = {"grpc.ssl_target_name_override": TLS_SERVER_NAME}
        super().__init__(host=host, port=port, options={**options, **override})
        self._credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        ch = self.channel = grpc.aio.secure_channel(
            f"{self._host}:{self._port}", self._credentials, options=list(self._options.items())
        )
        self.kvstub, self.clusterstub = rpc.KVStub(ch), rpc.ClusterStub(ch)
        self.leasestub, self.maintenancestub = rpc.LeaseStub(ch), rpc.MaintenanceStub(ch)
        self._connected.set()


class _TooLarge(StoreUnavailable):
    """A message over the gRPC size limit (RESOURCE_EXHAUSTED): ask for less."""


class EtcdMetaStore(MetaStore):
    def __init__(
        self, endpoints: Sequence[str], timeout: float = DEFAULT_TIMEOUT, *, tls: ClientTls
    ) -> None:
        host, port = _target(endpoints)
        self.tls, self._client = tls, _TlsClient(host, port, tls, dict(_CHANNEL_OPTIONS))
        self._timeout = timeout
        self._local_reads_until = 0.0
        peers = Peers(endpoints, lambda e: _TlsClient(*_target([e]), self.tls, _CHANNEL_OPTIONS))
        self._leader = LeaderCheck(self._call, peers)
        self._tokens = TokenLease(self._through_election)
        self.endpoints = list(endpoints)
        self._retired: list[_TlsClient] = []

    async def connect(self) -> None:
        await self._client.connect()

    async def close(self) -> None:
        for client in [*self._retired, self._client]:
            await client.close()
        await self._leader.peers.close()

    async def reopen(self, tls: ClientTls, endpoints: Sequence[str] | None = None) -> None:
        """New calls use a fresh channel with `tls` (a renewed certificate) and, when given,
        `endpoints` (the members as they are now, local first); calls in flight finish on the
        old one, closed with the store (or at the next reopen)."""
        host, port = _target(endpoints) if endpoints else (self._client._host, self._client._port)
        fresh = _TlsClient(host, port, tls, dict(_CHANNEL_OPTIONS))
        await fresh.connect()
        for old in self._retired:
            await old.close()
        self._retired, self._client, self.tls = [self._client], fresh, tls
        self.endpoints = list(endpoints or self.endpoints)
        await self._leader.peers.close(self.endpoints)  # reopened when next asked, with `tls`

    async def _call(self, method: str, request: Any, limit: float | None = None) -> Any:
        """`method` is "stub.Method", e.g. "kvstub.Range" (stubs exist once connected)."""
        client = self._client  # reopen() may swap it: this call stays on its channel
        if not client._connected.is_set():
            await client.connect()
        stub, _, name = method.partition(".")
        try:
            return await getattr(getattr(client, stub), name)(
                request, timeout=limit or self._timeout, metadata=client.metadata
            )
        except grpc.aio.AioRpcError as exc:
            detail = exc.details() or exc.code().name
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise _TooLarge(f"{_UNAVAILABLE}: {detail}") from exc
            raise StoreUnavailable(f"{_UNAVAILABLE}: {detail}") from exc
        except grpc.aio.UsageError as exc:  # its channel closed before the call (a reopen)
            raise StoreUnavailable(f"{_UNAVAILABLE}: {exc}") from exc
        except asyncio.CancelledError as exc:  # its channel closed: grpc cancels its calls
            if own_cancellation():
                raise
            raise StoreUnavailable(f"{_UNAVAILABLE}: the call's channel was closed") from exc

    async def _read(self, request: Any) -> Any:
        """A linearizable read; without quorum, this member's copy (pulls go on), never while
        it knows a leader (it may be catching up; its failed reads go through the others), in
        an election or behind another member (it may lack what was committed): etcd_leader."""
        deadline = time.monotonic() + self._timeout
        while True:
            got = await self._leader.read_elsewhere(request, LINEARIZABLE_READ_TIMEOUT, False)
            if got is not None:
                return got  # its own reads failed just before, with a leader: the others'
            if time.monotonic() < self._local_reads_until:
                leaderless = await self._leader.leaderless_for()
                # The members are asked from the first leaderless answer on: how long none
                # of them has known a leader counts from then (etcd_leader.copy_usable).
                usable = bool(leaderless) and await self._leader.copy_usable()
                if usable and leaderless >= SETTLED_SECONDS:
                    request.serializable = True
                    return await self._call("kvstub.Range", request)
                if not leaderless:
                    self._local_reads_until = 0.0
                else:  # an election, perhaps: wait for it, or for it to prove no quorum
                    deadline = max(deadline, self._leader.behind_until(leaderless) + 1)
            try:
                return await self._call("kvstub.Range", request, LINEARIZABLE_READ_TIMEOUT)
            except StoreUnavailable as exc:
                if isinstance(exc, _TooLarge) or time.monotonic() >= deadline:
                    raise
                got = await self._leader.read_elsewhere(request, LINEARIZABLE_READ_TIMEOUT, True)
                if got is not None:
                    return got  # with a leader: its reads stall (catching up), or it hangs
                self._local_reads_until = time.monotonic() + LOCAL_READ_WINDOW
                await asyncio.sleep(0.05)  # a refusal during an election comes at once

    async def _get(self, key: bytes) -> KV | None:
        resp = await self._read(rpc.RangeRequest(key=key))
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return KV(kv.key, kv.value, kv.mod_revision)

    async def _get_many(self, keys_: Sequence[bytes]) -> list[KV | None]:
        """One transaction of reads per batch: one round trip instead of one per key."""
        if len(keys_) <= 1 or time.monotonic() < self._local_reads_until:
            return await super()._get_many(keys_)
        out: list[KV | None] = []
        for i in range(0, len(keys_), _READS_PER_TXN):
            batch = keys_[i : i + _READS_PER_TXN]
            request = rpc.TxnRequest(
                compare=[],
                success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=k)) for k in batch],
                failure=[],
            )
            try:
                resp = await self._call("kvstub.Txn", request, LINEARIZABLE_READ_TIMEOUT)
            except _TooLarge:
                out += await super()._get_many(batch)  # large values: one read per key
                continue
            except StoreUnavailable:
                self._local_reads_until = time.monotonic() + LOCAL_READ_WINDOW
                return out + await super()._get_many(keys_[i:])
            for r in resp.responses:
                kvs = r.response_range.kvs
                out.append(KV(kvs[0].key, kvs[0].value, kvs[0].mod_revision) if kvs else None)
        return out

    async def _bounded(self, request: Any, linearizable: bool = True) -> Any:
        """One Range of at most STORE_PAGE keys whose answer fits in a message: a page
        over the limit is asked again with a quarter of the keys (one key always fits)."""
        request.limit = min(request.limit or STORE_PAGE, STORE_PAGE)
        while True:
            try:
                if linearizable:
                    return await self._read(request)
                return await self._call("kvstub.Range", request)
            except _TooLarge:
                if request.limit <= 1:
                    raise
                request.limit = max(1, request.limit // 4)

    async def _range(
        self, start: bytes, end: bytes, limit: int, keys_only: bool = False, revision: int = 0
    ) -> tuple[list[KV], bool]:
        request = rpc.RangeRequest(key=start, range_end=end, limit=limit, keys_only=keys_only)
        request.revision = revision  # a read of the past is consistent without a quorum read
        resp = await self._bounded(request, linearizable=not revision)
        kvs = [KV(kv.key, kv.value, kv.mod_revision) for kv in resp.kvs]
        return kvs, bool(resp.more)

    async def _pages(
        self, prefix: bytes, serializable: bool = False, revision: int = 0
    ) -> AsyncIterator[tuple[int, Any]]:
        """(header revision, kvs) per bounded page of every key under `prefix`, all read at
        the first page's revision (`revision` 0) or at `revision`: one consistent view."""
        end = keys.prefix_end(prefix)
        start = prefix
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, revision=revision, serializable=serializable
            )
            resp = await self._bounded(request, linearizable=False)
            if not revision:
                revision = int(resp.header.revision)
            yield revision, resp.kvs
            if not resp.more or not resp.kvs:
                return
            start = bytes(resp.kvs[-1].key) + b"\x00"

    async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        return (await self.txn_else_get(guards, ops, ()))[0]

    async def txn_else_get(
        self, guards: Sequence[Guard], ops: Sequence[Op], reads: Sequence[bytes]
    ) -> tuple[bool, list[KV | None]]:
        """`_txn`; when a guard fails, the values of `reads` (in the same request: a retry
        needs no read of its own)."""
        token = token_key()  # this write commits once (meta/etcd_txn.py)
        lease = await self._tokens.get()
        request = txn_request(guards, ops, reads, token, lease)
        # Every registry write is idempotent or guarded, so a write refused during a leader
        # election is retried until the election is over (about 1-2.5 s).
        # A write in flight when the leader dies hangs until its deadline: short attempts,
        # retried, finish right after the new election instead.
        try:
            resp = await self._through_election("kvstub.Txn", request, WRITE_ATTEMPT_TIMEOUT)
        except StoreUnavailable as exc:
            if "lease not found" in str(exc):
                self._tokens.lost()  # expired (a process paused past its TTL): a new one next
            elif committed := await fence(self._through_election, token, lease):
                LAST_REVISION.set(committed)  # it committed after all: not a failure
                return True, []
            raise
        LAST_REVISION.set(int(resp.header.revision))
        if resp.succeeded:
            return True, []
        *found, committed = [r.response_range.kvs for r in resp.responses]
        if committed:  # an earlier copy of this write committed; its answer was lost
            LAST_REVISION.set(int(committed[0].mod_revision))
            return True, []
        return False, [KV(k[0].key, k[0].value, k[0].mod_revision) if k else None for k in found]

    async def _through_election(
        self, method: str, request: Any, attempt: float, tries: list[int] | None = None
    ) -> Any:
        """`method` in attempts (`attempts(attempt)`), retried while etcd elects a leader,
        within WRITE_BUDGET; StoreUnavailable after that or on any other failure. `tries`, if
        given, gets the number of attempts made."""
        deadline = time.monotonic() + WRITE_BUDGET
        for n, limit in enumerate(attempts(attempt), 1):
            if tries is not None:
                tries[:] = [n]
            try:
                return await self._call(method, request, limit)
            except StoreUnavailable as exc:
                if not election(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)
        raise AssertionError("attempts() never ends")  # pragma: no cover

    async def _quorum_read(self, request: Any) -> Any:
        """A linearizable Range that must not fall back to the local copy: retried through
        an election, as writes are."""
        return await self._through_election("kvstub.Range", request, LINEARIZABLE_READ_TIMEOUT)

    async def revision(self) -> int:
        resp = await self._quorum_read(rpc.RangeRequest(key=b"\x00", limit=1, count_only=True))
        return int(resp.header.revision)

    async def _count(self, start: bytes, end: bytes) -> int:
        """etcd counts the keys of a range itself (one request, no keys sent)."""
        resp = await self._read(rpc.RangeRequest(key=start, range_end=end, count_only=True))
        return int(resp.count)


# -- membership, leases and per-member status: what the cluster layer needs ---------------


def _member(m: Any) -> Member:
    return Member(int(m.ID), m.name, tuple(m.peerURLs), tuple(m.clientURLs), bool(m.isLearner))


class EtcdCluster(EtcdMetaStore, ClusterStore):
    """The store and the cluster's records (ClusterStore), plus etcd's own cluster API:
    members, leases, member status."""

    async def members(self, linearizable: bool = True) -> list[Member]:
        resp = await self._call(
            "clusterstub.MemberList", rpc.MemberListRequest(linearizable=linearizable)
        )
        return [_member(m) for m in resp.members]

    async def _retrying(self, method: str, request: Any, patience: float) -> Any:
        deadline = time.monotonic() + patience
        delay = 0.25
        while True:
            try:
                return await self._call(method, request)
            except StoreUnavailable as exc:
                transient = any(t in str(exc).lower() for t in TRANSIENT)
                if not transient or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    async def add_member(self, peer_url: str, learner: bool, patience: float = 60) -> Member:
        request = rpc.MemberAddRequest(peerURLs=[peer_url], isLearner=learner)
        resp = await self._retrying("clusterstub.MemberAdd", request, patience)
        return _member(resp.member)

    async def promote_member(self, member_id: int, patience: float = 120) -> None:
        request = rpc.MemberPromoteRequest(ID=member_id)
        await self._retrying("clusterstub.MemberPromote", request, patience)

    async def remove_member(self, member_id: int, patience: float = 60) -> None:
        request = rpc.MemberRemoveRequest(ID=member_id)
        await self._retrying("clusterstub.MemberRemove", request, patience)

    async def grant_lease(self, ttl: int) -> int:
        # Retried through an election like writes: a lease granted by an attempt whose answer
        # was lost is never used, and expires after `ttl`.
        request = rpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._through_election("leasestub.LeaseGrant", request, WRITE_ATTEMPT_TIMEOUT)
        return int(resp.ID)

    async def revoke_lease(self, lease: int) -> None:
        await self._call("leasestub.LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))

    async def keep_alive(self, lease: int) -> bool:
        try:
            reply = await self._client.refresh_lease(lease)
        except Exception as exc:  # aetcd's own error classes, wrapping gRPC's
            raise StoreUnavailable(f"{_UNAVAILABLE}: {exc}") from exc
        return reply is not None and int(reply.TTL) > 0

    async def put_with_lease(self, key: bytes, value: bytes, lease: int) -> None:
        request = rpc.PutRequest(key=key, value=value, lease=lease)  # idempotent: retried
        await self._through_election("kvstub.Put", request, WRITE_ATTEMPT_TIMEOUT)

    async def _create_leased(
        self, key: bytes, value: bytes, lease: int, guards: Sequence[Guard] = ()
    ) -> bool:
        request = rpc.TxnRequest(
            compare=compares([(key, 0), *guards]),  # mod revision 0: the key is absent
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
            failure=[],
        )
        tries: list[int] = []
        resp = await self._through_election("kvstub.Txn", request, WRITE_ATTEMPT_TIMEOUT, tries)
        if resp.succeeded:
            return True
        if tries == [1]:
            return False  # refused at the first attempt: another holder has it
        # Refused after a retry: by another holder, or by the key an earlier attempt of this
        # very call created before its answer was lost (same value, same lease: ours).
        found = (await self._read(rpc.RangeRequest(key=key))).kvs
        return bool(found) and found[0].value == value and int(found[0].lease) == lease

    async def _values(self, prefix: bytes, local: bool = False) -> list[bytes]:
        out: list[bytes] = []
        async for _, kvs in self._pages(prefix, serializable=local):
            out += [bytes(kv.value) for kv in kvs]
        return out

    async def _dump(self, prefix: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
        at = 0
        out: list[tuple[bytes, bytes]] = []
        async for revision, kvs in self._pages(prefix):
            at = revision
            out += [(bytes(kv.key), bytes(kv.value)) for kv in kvs]
        return at, out


async def data_revision(client_url: str, patience: float = 5.0, *, tls: ClientTls) -> int:
    """The newest revision of registry data in one member's local copy (no quorum needed).

    The last-change key (rewritten by every registry transaction, deletes included), and,
    for data written before it existed, the newest key of each registry prefix: etcd sorts
    by modification revision and answers one key, whatever the size of the registry.
    """
    store = EtcdMetaStore([client_url], timeout=patience, tls=tls)
    newest = 0
    try:
        for prefix in (keys.LAST_CHANGE, *keys.REGISTRY_DATA):
            end = keys.prefix_end(prefix) if prefix.endswith(b"/") else b""
            request = rpc.RangeRequest(
                key=prefix,
                range_end=end,
                limit=1,
                keys_only=True,
                serializable=True,
                sort_order=rpc.RangeRequest.DESCEND,
                sort_target=rpc.RangeRequest.MOD,
            )
            resp = await store._call("kvstub.Range", request)
            if resp.kvs:
                newest = max(newest, int(resp.kvs[0].mod_revision))
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    return newest
