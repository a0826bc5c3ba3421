"""etcd watches (the access policy's cache, moorage.auth.policy; the webhook dispatcher,
moorage.cluster.webhook_dispatch): beside meta/etcd.py, the
other module allowed to speak to the etcd client (pyproject's import contract)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc
from aetcd import rpc

from moorage.errors import StoreUnavailable, own_cancellation
from moorage.meta import keys
from moorage.meta.etcd import _UNAVAILABLE, EtcdMetaStore


class WatchClosed(StoreUnavailable):
    """The store's channel was closed under a watch (EtcdMetaStore.reopen retires channels:
    new members, a renewed certificate); etcd itself is fine, so watch again at once."""


async def watch_prefixes(
    store: EtcdMetaStore,
    prefixes: Sequence[bytes],
    on_ready: Callable[[], None],
    on_change: Callable[[], None],
    on_keys: Callable[[list[bytes]], None] | None = None,
) -> None:
    """Watch the keys under `prefixes`: `on_ready` once every watch exists, `on_change` per
    batch of changes (and `on_keys` with the keys that changed). Returns (or raises
    StoreUnavailable; WatchClosed when a reopen closed its channel) when the stream ends or
    fails."""
    client = store._client
    await client.connect()
    call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
    try:
        for p in prefixes:
            create = rpc.WatchCreateRequest(key=p, range_end=keys.prefix_end(p))
            await call.write(rpc.WatchRequest(create_request=create))
        created = 0
        while (resp := await call.read()) is not grpc.aio.EOF:
            if resp.canceled or resp.compact_revision:
                return
            created += bool(resp.created)
            if resp.created and created == len(prefixes):
                on_ready()
            if resp.events:
                on_change()
                if on_keys is not None:
                    on_keys([e.kv.key for e in resp.events])
    except grpc.aio.AioRpcError as exc:
        raise StoreUnavailable(f"{_UNAVAILABLE}: {exc.details() or exc.code().name}") from exc
    except asyncio.CancelledError:
        if own_cancellation():
            raise  # this task is being cancelled
        # grpc cancelled the call: its channel was closed (EtcdMetaStore.reopen retires
        # channels); the caller watches again on the current one
        raise WatchClosed(f"{_UNAVAILABLE}: the watch's channel was closed") from None
    finally:
        call.cancel()
