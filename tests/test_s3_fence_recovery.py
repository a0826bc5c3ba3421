"""After an outage of the S3 store, the fence marker's read (moorage.cluster.s3fence) recovers at
once: a read against a dead store is one attempt, and the replica that served requests all
through the outage says it takes writes again only when it does, then acknowledges the first
push it gets. On a SeaweedFS of this module's own (stopped and started again here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.seaweed import SeaweedFS

from moorage.cluster.fence import FENCE_UNCHECKED, fence_watch
from moorage.cluster.replica_config import new_replica_config
from moorage.cluster.s3fence import S3FenceWatch
from moorage.config import DataDir
from tests.cluster import Cluster, cluster_of, free_port, push_image, sha256

#: Polls of a replica's /_ping?writable=1 (a quarter second apart) before it must say so.
MAX_POLLS = 120


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this module's own: the tests stop it."""
    s = SeaweedFS(tmp_path_factory.mktemp("weed"))
    s.start()
    yield s
    s.stop()


def test_a_read_against_a_dead_store_is_one_attempt(
    store: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cause of the slow recovery: every read of the marker was three botocore attempts
    (each up to a 10 s connect and a 30 s read timeout) cut only at the whole grace, then
    the next read came a full period later; the replica refused writes all that while after
    the store was back. Now a read is one attempt, and says why it failed."""
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    dead = store.storage_url("one").replace(store.endpoint, f"http://127.0.0.1:{free_port()}")

    async def reads(storage: str) -> tuple[S3FenceWatch, list[bool], int]:
        config = new_replica_config(DataDir(tmp_path / "d"), storage=storage, cluster_id="c1")
        watch = fence_watch(config)
        assert isinstance(watch, S3FenceWatch)
        sent = 0

        def count(**_: Any) -> None:
            nonlocal sent
            sent += 1

        (await watch.control.client()).meta.events.register("before-send.s3", count)
        try:
            return watch, [await watch.read_once(), await watch.read_once()], sent
        finally:
            await watch.control.aclose()

    live, results, sent = asyncio.run(reads(store.storage_url("one")))
    assert (results, sent) == ([True, True], 2)
    assert live.check() is None
    down, results, sent = asyncio.run(reads(dead))
    assert (results, sent) == ([False, False], 2)  # one request per read: no retries
    assert down.failed_reads == 2
    with pytest.raises(OSError, match=r"not read yet; the last attempt: S3 GET of one/fence"):
        down.check()


@pytest.fixture(scope="module")
def cluster(store: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {**store.env(), "MOORAGE_WORKERS": "1"}
    with cluster_of(
        1, tmp_path_factory.mktemp("s3fence"), env=env, s3=store.storage_url("reg")
    ) as c:
        yield c


def _writable(client: httpx.Client) -> httpx.Response:
    return client.get("/_ping", params={"writable": "1"})


def test_the_replica_that_served_the_outage_takes_the_first_push_after_it(
    cluster: Cluster, store: SeaweedFS
) -> None:
    """The store stops under a replica that keeps answering (pushes refused with a clear
    503, tag lists served from etcd) and starts again: the replica says it is not writable
    until its fence read is fresh (its plain /_ping reads as pulls-only, status never
    advises removing it for that), and once it says writable it acknowledges the very
    first push."""
    (node,) = cluster.nodes
    push_image(node, "fence/before", "v1", "before")
    body = b"pushed around the outage"
    upload = f"/v2/fence/after/blobs/uploads/?digest={sha256(body)}"
    store.stop()
    try:
        with node.client(timeout=120) as c:
            resp = c.post(upload, content=body)
            assert resp.status_code == 503, resp.text
            assert resp.json()["errors"][0]["code"] == "UNAVAILABLE"
            assert c.get("/v2/fence/before/tags/list").json()["tags"] == ["v1"]
            for _ in range(MAX_POLLS):  # the replica notices the outage itself
                if _writable(c).status_code == 503:
                    break
                time.sleep(0.25)
            ping = _writable(c)
            assert ping.status_code == 503, ping.text
    finally:
        store.start()
    with node.client(timeout=120) as c:
        seen: list[dict[str, Any]] = []
        for _ in range(MAX_POLLS):
            ping = _writable(c)
            if ping.status_code == 200:
                break
            seen.append(ping.json())
            plain = c.get("/_ping")
            if FENCE_UNCHECKED in (plain.json().get("error") or ""):
                # Only the fence check fails: pulls work, so the plain ping says pulls-only.
                assert plain.status_code == 200, plain.text
                assert plain.json()["read_only"] is True
            time.sleep(0.25)
        assert ping.status_code == 200, (ping.text, seen[-3:])
        assert ping.json() == {"healthy": True}
        # Writable now: the first push is acknowledged, no retry.
        resp = c.post(upload, content=body)
        assert resp.status_code == 201, resp.text
    push_image(node, "fence/after", "v1", "after")
    # Status polls (its etcd queries may time out on a busy machine) until healthy.
    cluster.wait_status("healthy")
