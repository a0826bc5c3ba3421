"""Webhooks on a real 3-replica cluster, with a real receiver on loopback: an image pushed
with skopeo gives exactly one push event, signed with the webhook's secret; a receiver that
fails three times gets the event once after the retries, with the attempts recorded; a
delete gives a delete event; the replica that accepted a push is killed while it delivers
the event, and another replica delivers it; bad input and non-admins are refused.

The dispatchers' fallback read is every 600 s here: every delivery the tests wait for was
started by the etcd watch (or a retry's own timer), never by a poll."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from harness.cluster import wait_dead
from hypothesis import given
from hypothesis import strategies as st

from tests.cluster import AUTH, OCI_MANIFEST, Cluster, Node, cluster_of, free_port, moorage
from tests.gc_images import image, layer, write_layout
from tests.gc_images import push as skopeo_push
from tests.test_fuzz import profile as fuzz_profile

MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
SECRET = "s3cr3t-for-the-test"
#: Quick retries (5 attempts: 0.3 + 0.6 + 1.2 + 2.4 s of backoff), no polling; the other
#: replicas leave an event to its own replica for 4 s; a claim outlives a dead claimer by at
#: most 8 s.
ENV = {
    "MOORAGE_WEBHOOK_POLL": "600",
    "MOORAGE_WEBHOOK_BACKOFF": "0.3",
    "MOORAGE_WEBHOOK_TIMEOUT": "6",
    "MOORAGE_WEBHOOK_CLAIM_TTL": "8",
    "MOORAGE_WEBHOOK_HANDOFF": "4",
    "MOORAGE_WEBHOOK_ATTEMPTS": "5",
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)["events"]
        return events


@dataclass
class Receiver:
    """An HTTP server on loopback that records every POST. `fail[path]`: how many more
    requests to that path answer 500; `hold[path]`: the first request waits for the event."""

    port: int
    received: list[Received] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    hold: dict[str, threading.Event] = field(default_factory=dict)
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int, patience: float = 60) -> list[Received]:
        deadline = time.monotonic() + patience
        while len(self.at(path)) < count:
            assert time.monotonic() < deadline, f"{path}: {len(self.at(path))} of {count}"
            time.sleep(0.1)
        return self.at(path)


def serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers), body))
                failing = receiver.fail.get(self.path, 0)
                if failing:
                    receiver.fail[self.path] = failing - 1
                held = receiver.hold.pop(self.path, None)
            receiver.arrived.set()
            if held is not None:
                held.wait(60)
            self.send_response(500 if failing else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    server = serve(r)
    try:
        yield r
    finally:
        for held in list(r.hold.values()):
            held.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(3, tmp_path_factory.mktemp("webhooks"), env=ENV) as c:
        yield c


def cli(node: Node, *args: str, check: bool = True) -> Any:
    out = moorage(*args, "--existing", node.url, "--json", check=check, env=ENV)
    return json.loads(out.stdout) if check else out


def add_hook(c: Cluster, receiver: Receiver, path: str, events: str, secret: bool = True) -> str:
    """Add a webhook through the admin API (the CLI's own test adds one with the CLI)."""
    body: dict[str, Any] = {"url": receiver.url(path), "events": events.split(",")}
    if secret:
        body["secret"] = SECRET
    with c.nodes[0].client() as http:
        resp = http.post("/api/v0/webhooks", json=body)
    assert resp.status_code == 200, resp.text
    hook_id: str = resp.json()["webhook"]["id"]
    return hook_id


def push(node: Node, tmp: Path, repo: str, tag: str) -> str:
    """Push an image with skopeo; the digest of the manifest the registry got."""
    seed = f"{repo}:{tag}"
    src = write_layout(tmp / f"{repo.replace('/', '_')}-{tag}", [image(tag, [layer(seed)], seed)])
    skopeo_push(src, tag, f"{node.url.removeprefix('http://')}/{repo}:{tag}")
    with node.client() as http:
        head = http.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert head.status_code == 200, head.text
    return head.headers["Docker-Content-Digest"]


def settled(node: Node, hook_id: str, until: Callable[[list[dict[str, Any]]], bool]) -> Any:
    """The webhook's deliveries once `until` holds and nothing is queued for it."""
    deadline = time.monotonic() + 90
    with node.client() as http:
        while True:
            hooks = {w["id"]: w for w in http.get("/api/v0/webhooks").json()["webhooks"]}
            done = http.get(f"/api/v0/webhooks/deliveries?webhook={hook_id}").json()
            if hooks[hook_id]["pending"] == 0 and until(done["deliveries"]):
                return done["deliveries"]
            assert time.monotonic() < deadline, f"not settled: {hooks[hook_id]} {done}"
            time.sleep(0.3)


def test_skopeo_push_sends_one_signed_push_event(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    url = receiver.url("/push")
    doc = cli(
        cluster.nodes[0], "webhook", "add", url, "--events", "push,delete", "--secret", SECRET
    )
    hook_id = doc["webhook"]["id"]
    digest = push(cluster.nodes[1], tmp_path, "hooks/app", "v1")
    done = settled(cluster.nodes[0], hook_id, lambda d: len(d) >= 1)
    got = receiver.at("/push")
    assert len(got) == 1, [r.events for r in got]  # exactly one event for one manifest push
    request = got[0]
    assert request.headers["Content-Type"] == MEDIA_TYPE
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Moorage-Signature"] == f"sha256={expected}"
    (event,) = request.events
    assert event["action"] == "push"
    target = event["target"]
    assert (target["repository"], target["tag"], target["digest"]) == ("hooks/app", "v1", digest)
    assert target["mediaType"] == OCI_MANIFEST
    assert target["size"] == target["length"] > 0
    assert target["url"].endswith(f"/v2/hooks/app/manifests/{digest}")
    assert event["actor"] == {"name": AUTH[0]}
    assert event["request"]["method"] == "PUT"
    assert "skopeo" in event["request"]["useragent"]
    assert event["source"]["instanceID"] == cluster.nodes[1].replica_id
    assert {"id", "timestamp"} <= set(event)
    assert [(d["event_id"], d["status"], d["status_code"]) for d in done] == [
        (event["id"], "delivered", 200)
    ]
    # The secret is never shown back.
    with cluster.nodes[2].client() as http:
        listed = http.get("/api/v0/webhooks").json()["webhooks"]
    assert SECRET not in json.dumps(listed)
    assert next(w for w in listed if w["id"] == hook_id)["signed"] is True


def test_failing_receiver_gets_the_event_once_after_retries(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.fail["/flaky"] = 3
    hook_id = add_hook(cluster, receiver, "/flaky", "push")
    digest = push(cluster.nodes[0], tmp_path, "hooks/flaky", "v1")
    done = settled(cluster.nodes[0], hook_id, lambda d: len(d) >= 1)
    got = receiver.at("/flaky")
    assert len(got) == 4  # three refusals, then the delivery
    assert len({r.events[0]["id"] for r in got}) == 1  # the same event each time
    assert [r.headers["X-Moorage-Attempt"] for r in got] == ["1", "2", "3", "4"]
    # Each failed attempt is shown as it happens (not only after the last one); newest first.
    d, *older = done
    tried = [(x["status"], x["status_code"], x["attempts"]) for x in older]
    assert tried == [("retrying", 500, 3), ("retrying", 500, 2), ("retrying", 500, 1)]
    assert all(x["next_at"] > x["finished_at"] for x in older)
    assert (d["status"], d["status_code"], d["attempts"], d["digest"]) == (
        "delivered", 200, 4, digest,
    )  # fmt: skip


def test_receiver_that_never_accepts_is_marked_failed(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.fail["/down"] = 1000
    hook_id = add_hook(cluster, receiver, "/down", "push")
    push(cluster.nodes[1], tmp_path, "hooks/down", "v1")
    d, *tried = settled(cluster.nodes[0], hook_id, lambda d: len(d) >= 1)  # newest first
    assert [(x["status"], x["attempts"]) for x in tried] == [("retrying", n) for n in (4, 3, 2, 1)]
    assert (d["status"], d["status_code"], d["attempts"]) == ("failed", 500, 5)
    assert d["error"] == "the receiver answered 500"
    assert len(receiver.at("/down")) == 5  # bounded: no attempt after the last
    text = moorage("webhook", "deliveries", hook_id, "--existing", cluster.nodes[2].url).stdout
    assert "failed" in text
    assert "HTTP 500  5 attempt(s)  hooks/down:v1@sha256:" in text


def test_pull_events_when_asked_for(cluster: Cluster, receiver: Receiver, tmp_path: Path) -> None:
    push(cluster.nodes[0], tmp_path, "hooks/pulled", "v1")
    hook_id = add_hook(cluster, receiver, "/pull", "pull")
    # Pulls read the webhooks each replica's dispatcher last saw (its watch tells it of a
    # new one): pull until that copy has the new webhook.
    deadline = time.monotonic() + 30
    with cluster.nodes[1].client() as http:
        while not receiver.at("/pull"):
            assert time.monotonic() < deadline
            got = http.get("/v2/hooks/pulled/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert got.status_code == 200
            time.sleep(0.5)
    event = receiver.at("/pull")[0].events[0]
    assert event["action"] == "pull"
    assert event["request"]["method"] == "GET"
    assert (event["target"]["repository"], event["target"]["tag"]) == ("hooks/pulled", "v1")
    with cluster.nodes[0].client() as http:
        assert http.delete(f"/api/v0/webhooks/{hook_id}").status_code == 200


def test_delete_events(cluster: Cluster, receiver: Receiver, tmp_path: Path) -> None:
    hook_id = add_hook(cluster, receiver, "/delete", "delete", secret=False)
    digest = push(cluster.nodes[0], tmp_path, "hooks/gone", "v1")
    with cluster.nodes[2].client() as http:
        assert http.delete("/v2/hooks/gone/manifests/v1").status_code == 202
        second = push(cluster.nodes[0], tmp_path, "hooks/gone", "v2")
        assert http.delete(f"/v2/hooks/gone/manifests/{second}").status_code == 202
    settled(cluster.nodes[0], hook_id, lambda d: len(d) >= 2)
    got = receiver.at("/delete")
    events = [r.events[0] for r in got]
    assert [e["action"] for e in events] == ["delete", "delete"]  # pushes not subscribed
    # In either order: events due in one round go out concurrently (README, "Webhooks").
    (by_tag,) = [e for e in events if "tag" in e["target"]]
    (by_digest,) = [e for e in events if e is not by_tag]
    assert by_tag["target"] == {"repository": "hooks/gone", "tag": "v1"}
    assert by_digest["target"]["digest"] == second != digest
    assert by_digest["request"]["method"] == "DELETE"
    assert all("X-Moorage-Signature" not in r.headers for r in got)  # no secret: not signed


def test_test_and_remove(cluster: Cluster, receiver: Receiver) -> None:
    hook_id = add_hook(cluster, receiver, "/ping", "push,pull")
    doc = cli(cluster.nodes[1], "webhook", "test", hook_id)
    assert (doc["delivery"]["status"], doc["delivery"]["status_code"]) == ("delivered", 200)
    assert receiver.at("/ping")[0].events[0]["action"] == "test", receiver.at("/ping")[0].body
    assert cli(cluster.nodes[0], "webhook", "remove", hook_id)["removed"] == hook_id
    with cluster.nodes[2].client() as http:
        listed = http.get("/api/v0/webhooks").json()["webhooks"]
    assert hook_id not in [w["id"] for w in listed]
    out = cli(cluster.nodes[0], "webhook", "test", hook_id, check=False)
    assert out.returncode == 1
    assert f"no webhook {hook_id}" in out.stderr


def test_hostile_input_is_refused(cluster: Cluster) -> None:
    url = cluster.nodes[0].url
    cases = [
        ({"url": "ftp://example.com/x", "events": ["push"]}, "http:// or https://"),
        ({"url": "http://", "events": ["push"]}, "no host"),
        ({"url": "http://u:p@example.com/", "events": ["push"]}, "credentials"),
        ({"url": "http://example.com/ x", "events": ["push"]}, "spaces"),
        ({"url": "http://example.com:99999/", "events": ["push"]}, "port"),
        ({"url": "http://example.com/", "events": ["push", "build"]}, "unknown event 'build'"),
        ({"url": "http://example.com/", "events": []}, "events is required"),
        ({"url": "http://example.com/", "events": ["push"], "extra": 1}, "unknown field"),
        ({"url": "http://example.com/", "events": ["push"], "secret": 7}, "secret must be"),
    ]
    with httpx.Client(base_url=url, auth=AUTH, timeout=30) as http:
        for body, why in cases:
            resp = http.post("/api/v0/webhooks", json=body)
            assert resp.status_code == 400, (body, resp.text)
            assert resp.json()["code"] == "INVALID", resp.text
            assert why in resp.json()["error"], resp.text
        assert http.delete("/api/v0/webhooks/0123456789ab").status_code == 404
        assert http.delete("/api/v0/webhooks/..%2f").status_code == 404
    # Not an admin: refused, and anonymous too.
    with httpx.Client(base_url=url, auth=AUTH, timeout=30) as http:
        made = http.post("/api/v0/users", json={"name": "dev", "password": "dev-password-1"})
        assert made.status_code in (200, 201), made.text
    with httpx.Client(base_url=url, auth=("dev", "dev-password-1"), timeout=30) as http:
        resp = http.post("/api/v0/webhooks", json={"url": "http://x/", "events": ["push"]})
        assert (resp.status_code, resp.json()["code"]) == (403, "DENIED")
        assert http.get("/api/v0/webhooks").status_code == 403
    assert httpx.get(f"{url}/api/v0/webhooks", timeout=30).status_code == 401
    # The CLI refuses before asking the cluster, saying what to give.
    out = cli(cluster.nodes[0], "webhook", "add", "file:///etc/passwd", "--events", "push",
              check=False)  # fmt: skip
    assert out.returncode == 2
    assert "http:// or https://" in out.stderr
    out = cli(cluster.nodes[0], "webhook", "add", "http://x/", "--events", "push,tag",
              check=False)  # fmt: skip
    assert out.returncode == 2
    assert "unknown event 'tag'" in out.stderr


def test_a_refused_push_sends_nothing_and_a_slow_receiver_holds_back_no_other(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    """The event is written in the push's own transaction: a push refused (its blobs are
    missing) queues no event. A receiver that does not answer holds back neither the other
    webhooks' events nor its own newer ones."""
    released = threading.Event()
    receiver.hold["/slow"] = released  # the first request to /slow hangs until released
    slow = add_hook(cluster, receiver, "/slow", "push")
    fast = add_hook(cluster, receiver, "/fast", "push")
    try:
        with cluster.nodes[0].client() as http:
            bad = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": "sha256:" + "0" * 64, "size": 2},
                "layers": [],
            })  # fmt: skip
            resp = http.put(
                "/v2/hooks/refused/manifests/v1",
                content=bad,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert resp.status_code == 400, resp.text
            assert resp.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
        push(cluster.nodes[0], tmp_path, "hooks/hol", "v1")
        (held,) = receiver.wait("/slow", 1)  # delivering v1 to /slow: it hangs
        push(cluster.nodes[1], tmp_path, "hooks/hol", "v2")
        # While /slow still holds v1: /fast gets both, and /slow gets v2 besides.
        fast_got = receiver.wait("/fast", 2)
        slow_got = receiver.wait("/slow", 2)
        assert not released.is_set()
        assert sorted(r.events[0]["target"]["tag"] for r in fast_got) == ["v1", "v2"]
        assert [r.events[0]["target"]["tag"] for r in slow_got] == ["v1", "v2"]
        assert held.events[0]["target"]["tag"] == "v1"
    finally:
        released.set()
    settled(cluster.nodes[0], slow, lambda d: len(d) >= 2)
    settled(cluster.nodes[0], fast, lambda d: len(d) >= 2)
    for path in ("/slow", "/fast"):
        tagged = [r.events[0]["target"] for r in receiver.at(path)]
        assert all(t["repository"] != "hooks/refused" for t in tagged)  # never an event
    with cluster.nodes[0].client() as http:
        for hook_id in (slow, fast):
            assert http.delete(f"/api/v0/webhooks/{hook_id}").status_code == 200


def test_pull_events_are_flushed_when_a_replica_stops(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    """Pulls wait half a second in memory to be queued together: a graceful stop (SIGTERM)
    queues them first, and another replica delivers them."""
    push(cluster.nodes[0], tmp_path, "hooks/flushed", "warm")
    push(cluster.nodes[0], tmp_path, "hooks/flushed", "last")
    hook_id = add_hook(cluster, receiver, "/flush", "pull")
    node = cluster.nodes[1]
    deadline = time.monotonic() + 30
    with node.client() as http:
        while not receiver.at("/flush"):  # until this replica's workers know the webhook
            assert time.monotonic() < deadline
            got = http.get("/v2/hooks/flushed/manifests/warm", headers={"Accept": OCI_MANIFEST})
            assert got.status_code == 200
            time.sleep(0.5)
        for _ in range(4):  # each worker of the replica gets one, as the connections go
            with node.client() as one:
                got = one.get("/v2/hooks/flushed/manifests/last", headers={"Accept": OCI_MANIFEST})
                assert got.status_code == 200
    pids = node.pids()
    os.kill(pids[0], signal.SIGTERM)  # the supervisor: the pulls are still in memory
    assert wait_dead(pids, 60)
    try:

        def last() -> list[dict[str, Any]]:
            return [
                e for r in receiver.at("/flush") for e in r.events
                if e["target"].get("tag") == "last"
            ]  # fmt: skip

        deadline = time.monotonic() + 60
        while len(last()) < 4:
            assert time.monotonic() < deadline, f"{len(last())} of 4 pulls delivered"
            time.sleep(0.2)
        assert {e["source"]["instanceID"] for e in last()} == {node.replica_id}
    finally:
        cluster.start(node)
    with cluster.nodes[0].client() as http:
        assert http.delete(f"/api/v0/webhooks/{hook_id}").status_code == 200


def test_retention_and_garbage_collection_send_delete_events(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    """Deletes the registry decides itself send `delete` events too (in the transaction of
    the delete): retention's by tag (its actor the admin who applied it), and garbage
    collection's of the untagged manifest by digest (its actor `moorage gc`)."""
    hook_id = add_hook(cluster, receiver, "/sysdel", "delete")
    old = push(cluster.nodes[0], tmp_path, "sysdel/app", "v1")
    push(cluster.nodes[0], tmp_path, "sysdel/app", "v2")
    cli(cluster.nodes[0], "policy", "set", "sysdel/app", "--keep-last", "1")
    done = cli(cluster.nodes[0], "policy", "apply", "sysdel/app", "--yes")
    assert [d["tag"] for d in done["deleted"]] == ["v1"]
    (by_retention,) = receiver.wait("/sysdel", 1)
    assert by_retention.events[0]["target"] == {"repository": "sysdel/app", "tag": "v1"}
    assert by_retention.events[0]["actor"] == {"name": AUTH[0]}
    with cluster.nodes[1].client(timeout=120) as http:
        ran = http.post("/api/v0/gc", json={"untagged": True, "grace": 0})
        assert ran.status_code == 200, ran.text
    # (the collection deletes every untagged manifest: earlier tests' too)
    deadline = time.monotonic() + 60
    while not any(r.events[0]["target"].get("digest") == old for r in receiver.at("/sysdel")):
        assert time.monotonic() < deadline, [r.events for r in receiver.at("/sysdel")]
        time.sleep(0.2)
    by_gc = [r.events[0] for r in receiver.at("/sysdel")[1:]]
    assert {"repository": "sysdel/app", "digest": old} in [e["target"] for e in by_gc]
    assert {e["actor"]["name"] for e in by_gc} == {"moorage gc"}
    with cluster.nodes[0].client() as http:
        assert http.delete(f"/api/v0/webhooks/{hook_id}").status_code == 200


def test_blob_mounts_send_mount_events(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    """A blob mounted from another repository sends Distribution's `mount` event, with the
    repository it came from."""
    hook_id = add_hook(cluster, receiver, "/mount", "mount")
    push(cluster.nodes[0], tmp_path, "mnt/src", "v1")
    with cluster.nodes[1].client() as http:
        manifest = http.get("/v2/mnt/src/manifests/v1", headers={"Accept": OCI_MANIFEST}).json()
        config = manifest["config"]["digest"]
        resp = http.post(f"/v2/mnt/dst/blobs/uploads/?mount={config}&from=mnt/src")
        assert resp.status_code == 201, resp.text
    (got,) = receiver.wait("/mount", 1)
    (event,) = got.events
    assert event["action"] == "mount"
    assert event["target"]["repository"] == "mnt/dst"
    assert event["target"]["fromRepository"] == "mnt/src"
    assert event["target"]["digest"] == config
    assert event["target"]["url"].endswith(f"/v2/mnt/dst/blobs/{config}")
    with cluster.nodes[0].client() as http:
        assert http.delete(f"/api/v0/webhooks/{hook_id}").status_code == 200


def test_event_of_a_killed_replica_is_delivered_by_another(
    cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    """Runs last in this module: it kills a replica."""
    accepting = cluster.nodes[2]
    survivor = cluster.nodes[0]
    released = threading.Event()
    receiver.hold["/handoff"] = released
    hook_id = add_hook(cluster, receiver, "/handoff", "push")
    try:
        digest = push(accepting, tmp_path, "hooks/handoff", "v1")
        (first,) = receiver.wait("/handoff", 1)
        # The replica that accepted the push is delivering; it dies before it is answered.
        assert first.headers["X-Moorage-Replica"] == accepting.replica_id
        cluster.kill(accepting)
    finally:
        released.set()
    done = settled(survivor, hook_id, lambda d: len(d) >= 1)
    got = receiver.at("/handoff")
    assert len(got) >= 2
    assert {r.events[0]["id"] for r in got} == {first.events[0]["id"]}
    (d,) = done
    assert d["status"] == "delivered"
    assert d["digest"] == digest
    assert d["replica"] in {n.replica_id for n in cluster.nodes[:2]}
    assert got[-1].headers["X-Moorage-Replica"] == d["replica"]


# -- fuzz ----------------------------------------------------------------------------------
_HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "http://127.0.0.1:1/", "https://example.invalid/x", "ftp://x/", "http://", "http://[::1",
        "http://u:p@h/", "http://h/#f", "http://h:99999/", "javascript:alert(1)", "\x00", "",
        "push", "delete", "pull", "mount", "push,delete", " push ", "x" * 3000, "%00", "../..",
    ]),
)  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_HOSTILE_TEXT, inner, max_size=4),
    max_leaves=12,
)
_BODY = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "url": _JSON, "events": _JSON, "secret": _JSON, "name": _JSON,
            "extra": _JSON,
        },
    ),
    _JSON,
)  # fmt: skip


def _stored(http: httpx.Client) -> list[dict[str, Any]]:
    resp = http.get("/api/v0/webhooks")
    assert resp.status_code == 200, resp.text
    hooks: list[dict[str, Any]] = resp.json()["webhooks"]
    return sorted(({k: v for k, v in h.items() if k != "pending"} for h in hooks), key=str)


@fuzz_profile(30)
@given(
    body=st.one_of(_BODY.map(lambda b: json.dumps(b).encode()), st.binary(max_size=200)),
    ctype=st.sampled_from(
        ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]
    ),
    hook_id=st.one_of(st.from_regex(r"[0-9a-f]{12}", fullmatch=True), _HOSTILE_TEXT),
)
def test_fuzz_the_webhooks_api(cluster: Cluster, body: bytes, ctype: str, hook_id: str) -> None:
    """Hostile bodies and ids: never a 500, and a refused request changes nothing stored
    (an accepted one is removed again)."""
    with httpx.Client(base_url=cluster.nodes[0].url, auth=AUTH, timeout=30) as http:
        before = _stored(http)
        headers = {"Content-Type": ctype} if ctype else {}
        try:
            resp = http.post("/api/v0/webhooks", content=body, headers=headers)
        except httpx.LocalProtocolError:
            return  # httpx refuses to send that header at all
        assert resp.status_code < 500, resp.text
        if resp.status_code == 200:
            made = resp.json()["webhook"]["id"]
            assert http.delete(f"/api/v0/webhooks/{made}").status_code == 200
        else:
            assert resp.json()["code"], resp.text  # the API's error envelope
            assert _stored(http) == before
        path = quote(hook_id, safe="")
        for method, url in (
            ("DELETE", f"/api/v0/webhooks/{path}"),
            ("POST", f"/api/v0/webhooks/{path}/test"),
            ("GET", f"/api/v0/webhooks/deliveries?webhook={path}"),
        ):
            resp = http.request(method, url)
            assert resp.status_code < 500, (method, url, resp.text)
            if resp.status_code >= 400:
                assert resp.json()["code"], resp.text
        assert _stored(http) == before
