"""Each etcd write of the store commits once, however often it is sent (meta/etcd_txn.py).

A probe paused the etcd leader: a tag write that had been retried (and acknowledged) was
committed a second time 5 s later from the copy the paused member held, after a newer
acknowledged write, putting the tag back on every replica (a lost update). A real etcd
member and the store in this process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from harness.etcd import start_etcd_member

from moorage.errors import StoreUnavailable
from moorage.meta import etcd, keys
from moorage.meta.base import LAST_REVISION
from moorage.meta.etcd import EtcdCluster
from moorage.meta.etcd_txn import FENCED
from moorage.meta.records import ManifestRecord

REPO = "team/app"


def record(n: int) -> ManifestRecord:
    return ManifestRecord(f"sha256:{n:064x}", "application/vnd.oci.image.manifest.v1+json", n)


def test_a_late_copy_of_a_write_changes_nothing_and_a_retry_reports_the_commit(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        store = EtcdCluster([url], tls=tls)
        real = store._call
        sent: list[Any] = []
        lose_answer = [False]

        async def call(method: str, request: Any, limit: float | None = None) -> Any:
            answer = await real(method, request, limit)
            if method == "kvstub.Txn":
                sent.append(request)
                if lose_answer[0]:  # committed, but the answer never came back
                    lose_answer[0] = False
                    raise StoreUnavailable("etcdserver: leader changed")
            return answer

        store._call = call  # type: ignore[method-assign]
        try:
            assert await store.put_manifest(REPO, record(1), ["t"]) == []
            first = sent[-1]
            assert await store.put_manifest(REPO, record(2), ["t"]) == []
            # The first write's copy arrives late: refused, the tag stays where it was put last.
            late = await real("kvstub.Txn", first, 5.0)
            assert not late.succeeded
            tag = await store.get_tag(REPO, "t")
            assert tag is not None
            assert tag.digest == record(2).digest
            # A write whose answer was lost is sent again: it reports the first commit.
            lose_answer[0] = True
            before = len(sent)
            assert await store.put_manifest(REPO, record(3), ["t"]) == []
            assert len(sent) == before + 2  # sent twice, committed once
            committed = LAST_REVISION.get()
            tag = await store.get_tag(REPO, "t")
            assert tag is not None
            assert tag.digest == record(3).digest
            again = await real("kvstub.Txn", sent[-1], 5.0)
            assert not again.succeeded  # its token stands
            assert committed == int(again.header.revision)  # the commit it reported, the last
        finally:
            await store.close()

    with start_etcd_member(tmp_path) as (url, tls):
        asyncio.run(main())


def test_a_write_that_gave_up_never_commits_later_or_reports_that_it_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write with no answer within its budget (its copies queued in a paused member) is
    fenced before its 503: its own token is created, so a copy arriving later changes
    nothing (a probe saw such a copy put a tag back over a newer acknowledged write). A
    write that did commit, its answers lost, is found by the fence and reported done."""
    monkeypatch.setattr(etcd, "WRITE_BUDGET", -1.0)  # one attempt, then give up

    async def main() -> None:
        store = EtcdCluster([url], tls=tls)
        real = store._call
        mode = ["pass"]
        held: list[Any] = []

        async def call(method: str, request: Any, limit: float | None = None) -> Any:
            fencing = method == "kvstub.Txn" and any(
                op.request_put.value == FENCED for op in request.success
            )
            if method != "kvstub.Txn" or fencing or mode[0] == "pass":
                return await real(method, request, limit)
            held.append(request)
            if mode[0] == "lose":  # committed, every answer lost
                await real(method, request, limit)
            raise StoreUnavailable("the metadata store (etcd) is unavailable: Deadline Exceeded")

        store._call = call  # type: ignore[method-assign]
        try:
            assert await store.put_manifest(REPO, record(1), ["t"]) == []
            mode[0] = "hold"  # the write never gets through: 503, fenced
            with pytest.raises(StoreUnavailable):
                await store.put_manifest(REPO, record(2), ["t"])
            mode[0] = "pass"
            assert await store.put_manifest(REPO, record(3), ["t"]) == []
            late = await real("kvstub.Txn", held[-1], 5.0)  # the held copy arrives now
            assert not late.succeeded
            tag = await store.get_tag(REPO, "t")
            assert tag is not None
            assert tag.digest == record(3).digest  # not put back to record 2
            mode[0] = "lose"  # committed, no answer: the fence finds it, no 503
            assert await store.put_manifest(REPO, record(4), ["t"]) == []
            tag = await store.get_tag(REPO, "t")
            assert tag is not None
            assert tag.digest == record(4).digest
            kv = await store._get(keys.tag(REPO, "t"))
            assert kv is not None
            assert LAST_REVISION.get() == kv.mod_revision  # the commit it reported
        finally:
            await store.close()

    with start_etcd_member(tmp_path) as (url, tls):
        asyncio.run(main())
