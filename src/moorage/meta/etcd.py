"""The etcd backend: the only module that imports the etcd client.

Requests go to the local member first; the gRPC target lists every member's client
address so the channel fails over, and every call has a deadline so a store without
quorum answers StoreUnavailable instead of hanging a request forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from moorage.errors import StoreUnavailable
from moorage.meta.base import KV, Delete, Guard, MetaStore, Op, Put

DEFAULT_TIMEOUT = 5.0
_UNAVAILABLE = "the metadata store (etcd) is unavailable"


def _target(endpoints: Sequence[str]) -> tuple[str, int]:
    """aetcd joins host and port; a multi-address gRPC target fails over between members."""
    hosts = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
    last_host, _, last_port = hosts[-1].rpartition(":")
    if len(hosts) == 1:
        return last_host, int(last_port)
    return "ipv4:" + ",".join([*hosts[:-1], last_host]), int(last_port)


class EtcdMetaStore(MetaStore):
    def __init__(self, endpoints: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        host, port = _target(endpoints)
        self._client: Any = aetcd.Client(host=host, port=port)
        self._timeout = timeout
        self.endpoints = list(endpoints)

    async def connect(self) -> None:
        await self._client.connect()

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, method: str, request: Any) -> Any:
        """`method` is "stub.Method", e.g. "kvstub.Range" (stubs exist once connected)."""
        if not self._client._connected.is_set():
            await self._client.connect()
        stub, _, name = method.partition(".")
        try:
            return await getattr(getattr(self._client, stub), name)(
                request, timeout=self._timeout, metadata=self._client.metadata
            )
        except grpc.aio.AioRpcError as exc:
            detail = exc.details() or exc.code().name
            raise StoreUnavailable(f"{_UNAVAILABLE}: {detail}") from exc

    async def _get(self, key: bytes) -> KV | None:
        resp = await self._call("kvstub.Range", rpc.RangeRequest(key=key))
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return KV(kv.key, kv.value, kv.mod_revision)

    async def _range(
        self, start: bytes, end: bytes, limit: int = 0, keys_only: bool = False
    ) -> tuple[list[KV], bool]:
        request = rpc.RangeRequest(key=start, range_end=end, limit=limit, keys_only=keys_only)
        resp = await self._call("kvstub.Range", request)
        return [KV(kv.key, kv.value, kv.mod_revision) for kv in resp.kvs], bool(resp.more)

    async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
        compare = [
            rpc.Compare(
                key=key,
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.MOD,
                mod_revision=revision,
            )
            for key, revision in guards
        ]
        success = []
        for op in ops:
            if isinstance(op, Put):
                success.append(
                    rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value))
                )
            elif isinstance(op, Delete):
                success.append(
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key))
                )
        request = rpc.TxnRequest(compare=compare, success=success, failure=[])
        resp = await self._call("kvstub.Txn", request)
        return bool(resp.succeeded)

    async def revision(self) -> int:
        resp = await self._call(
            "kvstub.Range", rpc.RangeRequest(key=b"\x00", limit=1, count_only=True)
        )
        return int(resp.header.revision)
