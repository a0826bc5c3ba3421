"""A push goes by the webhooks as last read, without a read per push: the guard in its
transaction (`keys.WEBHOOK_SET`) refuses it once a webhook was added or removed since, and
its retry reads them afresh. Two replicas' `Webhooks` over one real etcd; the one pushing
never hears of the other's change but through the refused transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.etcd import start_etcd_member

from moorage.api.webhooks import notice_for
from moorage.cluster.webhooks import RequestInfo, Webhooks
from moorage.meta.etcd import ClientTls, EtcdCluster
from moorage.meta.webhooks import WebhookRecord
from moorage.oci import mediatypes as mt
from moorage.registry.manifests import Manifests
from moorage.storage.filesystem import FilesystemStorage

REPO = "hooks/guarded"
INFO = RequestInfo("req", "127.0.0.1:1", "registry", "PUT", "test", "admin", "http://registry")


@pytest.fixture(scope="module")
def etcd_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ClientTls]]:
    with start_etcd_member(tmp_path_factory.mktemp("push-guard-etcd")) as member:
        yield member


def _manifest(config: bytes, note: str) -> bytes:
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(config),
            },
            "layers": [],
            "annotations": {"note": note},
        }
    ).encode()


def _hook(hook_id: str, events: tuple[str, ...]) -> WebhookRecord:
    return WebhookRecord(hook_id, f"http://127.0.0.1:1/{hook_id}", events, hook_id)


def test_a_push_with_a_stale_view_of_the_webhooks_still_has_the_event(
    etcd_member: tuple[str, ClientTls], tmp_path: Path
) -> None:
    async def main() -> None:
        store = EtcdCluster([etcd_member[0]], tls=etcd_member[1])
        try:
            pusher = Webhooks(store, "replica-a", "127.0.0.1:1")
            other = Webhooks(store, "replica-b", "127.0.0.1:2")
            manifests = Manifests(FilesystemStorage(tmp_path / "blobs"), store)
            config = b'{"architecture":"amd64","os":"linux"}'
            config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
            await manifests.storage.put_bytes(config_digest, config)
            assert await store.link_blob(REPO, config_digest, len(config))

            async def push(tag: str) -> str:
                pushed = await manifests.put(
                    REPO,
                    tag,
                    _manifest(config, tag),
                    mt.OCI_MANIFEST,
                    notice=notice_for(pusher, REPO, INFO),
                )
                return str(pushed.digest)

            async def outbox() -> dict[str, tuple[str, ...]]:
                entries = await pusher.store.outbox(100)
                return {e.event["target"]["digest"]: e.hooks for _, _, e in entries if e}

            await push("before")  # reads the webhooks once: none
            assert await outbox() == {}
            read_once = pusher._push_view
            assert read_once is not None
            await push("again")  # no read: the same view, and still no event
            assert pusher._push_view is read_once
            assert await outbox() == {}

            # Another replica adds a webhook; this one's view is stale now.
            assert await other.store.add(_hook("aaaaaaaaaaaa", ("push",)))
            first = await push("after-add")
            assert (await outbox())[first] == ("aaaaaaaaaaaa",)
            assert pusher._push_view is not read_once  # read afresh after the refusal

            # A second webhook, then the first removed: each push names exactly the
            # webhooks there were when it committed.
            assert await other.store.add(_hook("bbbbbbbbbbbb", ("push", "delete")))
            second = await push("after-second")
            assert (await outbox())[second] == ("aaaaaaaaaaaa", "bbbbbbbbbbbb")
            assert await other.store.remove("aaaaaaaaaaaa")
            third = await push("after-remove")
            assert (await outbox())[third] == ("bbbbbbbbbbbb",)
            assert len(await outbox()) == 3  # one event per push that had a webhook
        finally:
            await store.close()

    asyncio.run(main())
