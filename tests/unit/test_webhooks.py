"""Webhooks in process: what a webhook may be, the event's signature and backoff, and the
queue's guarantees over the in-memory store (one claimer at a time, deliveries bounded)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import httpx
import pytest

from moorage.cluster import webhook_input as wi
from moorage.cluster import webhooks as wh
from moorage.cluster.webhook_dispatch import Dispatcher
from moorage.meta import keys
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.webhook_seal import Sealer
from moorage.meta.webhooks import (
    KEEP_DELIVERIES,
    Delivery,
    QueuedEvent,
    WebhookRecord,
    WebhookStore,
)

INFO = wh.RequestInfo(
    "rid", "10.0.0.1:5555", "reg:5000", "PUT", "skopeo/1", "alice", "http://reg:5000"
)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://h/x", "http:// or https://"),
        ("http:///x", "no host"),
        ("https://u:p@h/", "credentials"),
        ("http://h/a b", "spaces"),
        ("http://h:70000/", "invalid port"),
        ("http://h/#frag", "fragment"),
        ("http://h/" + "x" * 3000, "longer than"),
        (7, "url is required"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        wi.check_url(url)


def test_events_are_a_known_subset() -> None:
    assert wi.check_events("push, delete,push") == ("push", "delete")
    assert wi.check_events(["pull"]) == ("pull",)
    assert wi.check_events("mount,push") == ("mount", "push")
    with pytest.raises(ValueError, match="unknown event 'tag': choose from push, delete, pull"):
        wi.check_events("push,tag")
    with pytest.raises(ValueError, match="events is required"):
        wi.check_events("")


def test_new_webhook_keeps_the_secret_out_of_its_public_form() -> None:
    record = wi.new_webhook(
        {"url": "https://ci.example/hook", "events": ["push"], "secret": "zq-secret-9"}, "a"
    )
    assert record.name == "ci.example"
    assert "zq-secret-9" not in json.dumps(record.public())
    assert record.public()["signed"] is True
    with pytest.raises(ValueError, match="unknown field"):
        wi.new_webhook({"url": "https://h/", "events": ["push"], "token": "x"}, "a")


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = wh.envelope([{"id": "1", "action": "push"}])
    assert json.loads(body) == {"events": [{"id": "1", "action": "push"}]}
    expected = hmac.new(b"s", body, hashlib.sha256).hexdigest()
    assert wh.sign("s", body) == f"sha256={expected}"


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = [wh.backoff(n) for n in range(1, 20)]
    assert delays[1] == 2 * delays[0]
    assert delays == sorted(delays)
    assert delays[-1] == wh.BACKOFF_CAP


def test_event_has_the_distribution_fields() -> None:
    hooks = wh.Webhooks(MemoryMetaStore(), "abcdefabcdef", "reg:5000")
    event = hooks.event("push", "app", INFO, "sha256:" + "a" * 64, "application/x", 12, "v1")
    assert set(event) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
    assert event["target"] == {
        "repository": "app",
        "mediaType": "application/x",
        "size": 12,
        "length": 12,
        "digest": "sha256:" + "a" * 64,
        "url": "http://reg:5000/v2/app/manifests/sha256:" + "a" * 64,
        "tag": "v1",
    }
    assert event["source"] == {"addr": "reg:5000", "instanceID": "abcdefabcdef"}
    assert event["actor"] == {"name": "alice"}
    assert event["timestamp"].endswith("Z")


def test_one_claimer_at_a_time_and_deliveries_are_bounded() -> None:
    async def scenario() -> None:
        meta = MemoryMetaStore()
        hooks = wh.Webhooks(meta, "abcdefabcdef", "reg:5000")
        store = hooks.store
        record = wi.new_webhook({"url": "http://h/", "events": ["push"]}, "admin")
        assert await store.add(record)
        await hooks.emit(hooks.event("push", "app", INFO))
        await hooks.emit(hooks.event("delete", "app", INFO))  # not subscribed
        assert len(await store.outbox(10)) == 2
        await Dispatcher(hooks, "w0")._fan_out(await store.hooks())
        assert await store.outbox(10) == []  # each entry moved, or dropped if unwanted
        (q,) = await store.queued(record.id, 10)
        first, second = await store.lease(30), await store.lease(30)
        assert await store.claim(q, "w1", first)
        assert not await store.claim(q, "w2", second)  # held
        await store.release(first)  # the claimer died: its lease ends
        assert await store.claim(q, "w2", second)
        item = QueuedEvent(q.item.event, q.item.origin, q.item.created_at, attempts=1)
        failed = Delivery(record.id, "e", "push", "app", "", "", False, 500, 1, "HTTP 500", 1.0,
                          "r", state="retrying", next_at=time.time() + 60)  # fmt: skip
        assert await store.retry(q, item, wh.seq(time.time() + 60), failed, wh.seq())
        (shown,) = await store.deliveries(record.id)  # the failed attempt, shown at once
        assert shown.to_json()["status"] == "retrying"
        assert shown.next_at == failed.next_at
        (again,) = await store.queued(record.id, 10)
        assert again.item.attempts == 1
        assert again.seq > q.seq
        # a stale read changes nothing
        assert not await store.retry(q, item, wh.seq(), failed, wh.seq())
        third = await store.lease(30)
        # The retry freed the claim: a worker still holding the read of before the attempt
        # may not claim it (it would send attempt 1 again), the fresh read may.
        assert not await store.claim(q, "w3", third)
        assert await store.claim(again, "w3", third)
        await store.release(third)
        done = Delivery(record.id, "e", "push", "app", "", "", True, 200, 2, None, 1.0, "r")
        assert await store.finish(again, done, wh.seq())
        await store.release(second)
        assert await store.queued(record.id, 10) == []
        for i in range(KEEP_DELIVERIES + 5):
            await store.record(record.id, wh.seq(1000.0 + i), done)
        kept = await store.deliveries(record.id)
        assert len(kept) == KEEP_DELIVERIES
        assert await store.remove(record.id)
        assert await WebhookStore(meta).deliveries(record.id) == []
        assert await store.hooks() == []

    asyncio.run(scenario())


def test_secrets_are_sealed_at_rest_and_open_only_with_the_cluster_secret() -> None:
    async def scenario() -> None:
        meta = MemoryMetaStore()
        cluster_secret = b"k" * 32
        store = WebhookStore(meta, Sealer(cluster_secret))
        body = {"url": "http://h/", "events": ["push"], "secret": "hunter2-webhook"}
        record = wi.new_webhook(body, "admin")
        assert await store.add(record)
        stored = await meta._get(keys.webhook(record.id))
        assert stored is not None
        assert b"hunter2" not in stored.value
        assert "sealed_secret" in json.loads(stored.value)
        (read,) = await store.hooks()
        assert read.secret == "hunter2-webhook"
        assert read.secret_error is None
        assert read.public()["signed"] is True
        assert "secret" not in read.public()
        # Another cluster's secret does not open it: deliveries fail, never go unsigned.
        (other,) = await WebhookStore(meta, Sealer(b"x" * 32)).hooks()
        assert other.secret is None
        assert other.secret_error is not None
        assert "cluster secret" in other.secret_error
        # A record of the version before sealing (plain "secret") still signs.
        legacy = json.loads(stored.value) | {"secret": "old-plain"}
        del legacy["sealed_secret"]
        old = WebhookRecord.decode(json.dumps(legacy).encode(), Sealer(b""))
        assert old is not None
        assert old.secret == "old-plain"
        async with httpx.AsyncClient() as client:
            status, error = await wh.post(client, other, b"{}", "r", 1)
        assert status is None
        assert error == other.secret_error[:300]

    asyncio.run(scenario())


def test_a_full_queue_drops_new_events_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook whose receiver is down for days cannot fill etcd: past QUEUE_MAX queued
    events, new ones are dropped, counted, and told in its deliveries (one record a minute)."""
    import moorage.cluster.webhook_dispatch as dispatch

    monkeypatch.setattr(dispatch, "QUEUE_MAX", 3)

    async def scenario() -> None:
        meta = MemoryMetaStore()
        hooks = wh.Webhooks(meta, "abcdefabcdef", "reg:5000")
        store = hooks.store
        record = wi.new_webhook({"url": "http://h/", "events": ["push"]}, "admin")
        other = wi.new_webhook({"url": "http://i/", "events": ["push"]}, "admin")
        assert await store.add(record)
        assert await store.add(other)
        before = _dropped_metric(record.id)
        d = Dispatcher(hooks, "w0")
        for _ in range(5):
            await hooks.emit(hooks.event("push", "app", INFO))
            await d._fan_out(await store.hooks())
        assert await store.outbox(10) == []
        assert await store.pending(record.id) == 3
        assert await store.pending(other.id) == 3
        (note,) = await store.deliveries(record.id)  # the first drop, at once
        shown = note.to_json()
        assert shown["status"] == "dropped"
        assert shown["events"] == 1
        assert "MOORAGE_WEBHOOK_QUEUE_MAX" in (note.error or "")
        assert _dropped_metric(record.id) - before == 2
        # The second drop is recorded with the next note, a minute later.
        noted, count, event = d._drops[record.id]
        assert count == 1
        d._drops[record.id] = (noted - 61, count, event)
        await d._note_drops({record.id, other.id})
        assert [x.events for x in await store.deliveries(record.id)] == [1, 1]
        # Once the queue drains below the limit, events are queued again.
        for q in await store.queued(record.id, 10):
            await store.drop(q)
        d._counts.clear()
        await hooks.emit(hooks.event("push", "app", INFO))
        await d._fan_out(await store.hooks())
        assert await store.pending(record.id) == 1

    asyncio.run(scenario())


def _dropped_metric(hook_id: str) -> float:
    from moorage.cluster.webhook_dispatch import DROPPED

    return float(DROPPED.labels(hook_id)._value.get())
