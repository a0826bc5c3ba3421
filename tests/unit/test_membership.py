"""The join's member add: etcd's "unhealthy cluster" refusal (a voter connected for less than
its 5 s health interval, right after the previous join) is asked again every quarter second;
any other refusal goes to the store's own retries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from moorage.cluster import membership
from moorage.errors import StoreUnavailable
from moorage.meta.etcd import Member

UNHEALTHY = "the metadata store (etcd) is unavailable: etcdserver: unhealthy cluster"


class FakeStore:
    def __init__(self, answers: list[str | None]) -> None:
        self.answers = answers
        self.calls: list[float] = []

    async def add_member(self, peer_url: str, learner: bool, patience: float = 60) -> Member:
        self.calls.append(patience)
        answer = self.answers.pop(0)
        if answer is not None:
            raise StoreUnavailable(answer)
        return Member(7, "", (peer_url,), (), learner)


def _add(store: FakeStore) -> Member:
    return asyncio.run(membership._add_learner(store, "http://127.0.0.1:1"))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership, "ADD_RETRY_INTERVAL", 0.0)


def test_unhealthy_cluster_is_asked_again_without_backoff() -> None:
    store = FakeStore([UNHEALTHY, UNHEALTHY, UNHEALTHY, None])
    member = _add(store)
    assert member.is_learner
    assert member.peer_urls == ("http://127.0.0.1:1",)
    # each attempt is a single call (no backoff inside the store)
    assert store.calls == [0, 0, 0, 0]


def test_another_refusal_goes_to_the_store_retries() -> None:
    store = FakeStore(["the metadata store (etcd) is unavailable: too many learner members", None])
    _add(store)
    assert store.calls[0] == 0
    assert store.calls[1] > 50  # the rest of the patience, with the store's own retries


def test_unhealthy_until_the_patience_ends_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership, "ADD_PATIENCE", 0.0)
    store = FakeStore([UNHEALTHY])
    with pytest.raises(StoreUnavailable, match="unhealthy cluster"):
        _add(store)
    assert store.calls == [0]


def test_a_hard_error_is_the_store_s_to_report() -> None:
    denied = "the metadata store (etcd) is unavailable: permission denied"
    store: Any = FakeStore([denied, denied])
    with pytest.raises(StoreUnavailable, match="permission denied"):
        _add(store)
    assert len(store.calls) == 2  # not asked again here


def _doc(*errors: str | None) -> dict[str, Any]:
    return {
        "scenario": "replicas-unhealthy",
        "replicas": [
            {"id": f"r{i}", "healthy": e is None, "error": e} for i, e in enumerate(errors)
        ],
    }


def _unhealthy(monkeypatch: pytest.MonkeyPatch, docs: list[dict[str, Any]]) -> list[Any]:
    async def status(store: Any, config: Any) -> dict[str, Any]:
        return docs.pop(0)

    monkeypatch.setattr(membership, "cluster_status", status)
    monkeypatch.setattr(membership, "_refuse_without_quorum", lambda doc: None)
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    return asyncio.run(membership._unhealthy_after_election(None, None))  # type: ignore[arg-type]


async def _no_sleep(seconds: float) -> None:
    return None


def test_a_replica_met_by_an_election_is_asked_again_before_refusing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    election = "etcd: the metadata store (etcd) is unavailable: etcdserver: leader changed"
    docs = [_doc(None, election), _doc(None, election), _doc(None, None)]
    assert _unhealthy(monkeypatch, docs) == []
    assert docs == []


def test_a_broken_replica_refuses_the_join_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [_doc(None, "storage: No space left on device"), _doc(None, None)]
    bad = _unhealthy(monkeypatch, docs)
    assert [r["id"] for r in bad] == ["r1"]
    assert len(docs) == 1  # not asked again
