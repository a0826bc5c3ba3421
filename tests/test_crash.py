"""SIGKILL the whole replica mid-upload and mid-manifest-push: nothing partial becomes
visible and everything acknowledged survives."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
from harness.replica import Replica

from tests.oci import sha256

CHUNK = 1024 * 1024


def _stalled_body(first: bytes, sent: threading.Event, release: threading.Event) -> Iterator[bytes]:
    yield first
    sent.set()
    release.wait(30)  # the replica is killed while the request is still open
    yield b"never acknowledged"


Body = Callable[[bytes], Iterator[bytes]]


def _send_then_kill(replica: Replica, request: Callable[[Body], None]) -> None:
    sent, release = threading.Event(), threading.Event()

    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            request(lambda first: _stalled_body(first, sent, release))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert sent.wait(30)
    time.sleep(0.5)  # let the server write what it received
    replica.kill()
    release.set()
    t.join(30)


def test_kill_mid_upload(fresh_replica: Replica) -> None:
    r = fresh_replica
    r.start()
    acked = bytes(range(256)) * 4096  # 1 MiB, acknowledged before the crash
    first = b"a" * CHUNK
    second = b"b" * CHUNK
    whole = first + second
    with r.client() as c:
        assert (
            c.post(f"/v2/crash/up/blobs/uploads/?digest={sha256(acked)}", content=acked).status_code
            == 201
        )
        loc = c.post("/v2/crash/up/blobs/uploads/").headers["location"]
        resp = c.patch(
            loc,
            content=first,
            headers={"Content-Range": f"0-{CHUNK - 1}", "Content-Type": "application/octet-stream"},
        )
        assert resp.status_code == 202
        loc = resp.headers["location"]

    # 1. killed while the second chunk is streaming in
    def patch(body: Body) -> None:
        with r.client() as c:
            c.patch(
                loc,
                content=body(second[: CHUNK // 2]),
                headers={"Content-Type": "application/octet-stream"},
            )

    _send_then_kill(r, patch)
    r.start()

    # 2. killed while a monolithic upload is streaming in
    mono = b"m" * (3 * CHUNK)

    def post(body: Body) -> None:
        with r.client() as c:
            c.post(f"/v2/crash/up/blobs/uploads/?digest={sha256(mono)}", content=body(mono[:CHUNK]))

    _send_then_kill(r, post)
    r.start()

    with r.client() as c:
        # What was acknowledged is intact.
        got = c.get(f"/v2/crash/up/blobs/{sha256(acked)}")
        assert got.status_code == 200
        assert got.content == acked
        # Nothing partial is visible as a blob.
        for partial in (whole, mono):
            assert c.head(f"/v2/crash/up/blobs/{sha256(partial)}").status_code == 404
        # The interrupted upload resumes from the offset the registry reports: the bytes it
        # holds are a prefix of what the client sent, never more than was sent, never torn.
        status = c.get(loc)
        assert status.status_code == 204
        end = int(status.headers["range"].split("-")[1])
        offset = end + 1
        assert CHUNK <= offset <= CHUNK + CHUNK // 2
        resp = c.patch(
            status.headers["location"],
            content=whole[offset:],
            headers={
                "Content-Range": f"{offset}-{len(whole) - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert resp.status_code == 202, resp.text
        done = c.put(
            f"{resp.headers['location']}&digest={sha256(whole)}"
            if "?" in resp.headers["location"]
            else f"{resp.headers['location']}?digest={sha256(whole)}"
        )
        assert done.status_code == 201, done.text
        assert c.get(f"/v2/crash/up/blobs/{sha256(whole)}").content == whole


def _manifest(config: tuple[str, int], layer: tuple[str, int], n: int) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config[0],
            "size": config[1],
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer[0],
                "size": layer[1],
            }
        ],
        "annotations": {"n": str(n)},
    }
    return json.dumps(doc).encode()


def test_kill_mid_manifest_push(fresh_replica: Replica) -> None:
    r = fresh_replica
    r.start()
    repo = "crash/manifests"
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes" * 100
    with r.client() as c:
        for blob in (config, layer):
            assert (
                c.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob).status_code
                == 201
            )
    cref, lref = (sha256(config), len(config)), (sha256(layer), len(layer))

    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def pusher(worker: int) -> None:
        n = 0
        with r.client(timeout=10) as c:
            while not stop.is_set():
                n += 1
                body = _manifest(cref, lref, worker * 1_000_000 + n)
                tag = f"w{worker}-{n}"
                try:
                    resp = c.put(
                        f"/v2/{repo}/manifests/{tag}",
                        content=body,
                        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                    )
                except httpx.HTTPError:
                    return
                if resp.status_code == 201:
                    with lock:
                        acked[tag] = body

    threads = [threading.Thread(target=pusher, args=(w,), daemon=True) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    r.kill()  # while eight pushers are mid-request
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 150

    r.start()
    with r.client() as c:
        for tag, body in acked.items():
            got = c.get(
                f"/v2/{repo}/manifests/{tag}",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert got.status_code == 200, (tag, got.text)
            assert got.content == body
            assert got.headers["docker-content-digest"] == sha256(body)
        # Every listed tag resolves to a complete manifest: no half-written state.
        tags = c.get(f"/v2/{repo}/tags/list").json()["tags"]
        assert set(acked) <= set(tags)
        for tag in set(tags) - set(acked):
            got = c.get(f"/v2/{repo}/manifests/{tag}")
            assert got.status_code == 200
            assert got.headers["docker-content-digest"] == sha256(got.content)
        # And the registry still takes writes.
        body = _manifest(cref, lref, -1)
        assert (
            c.put(
                f"/v2/{repo}/manifests/after",
                content=body,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            ).status_code
            == 201
        )


def test_kill_mid_concurrent_blob_pushes(fresh_replica: Replica) -> None:
    """Blobs installed in shared batches (storage.syncer: one fsync per directory for every
    commit of a batch): a SIGKILL while eight pushers keep committing loses none that was
    acknowledged, and shows none half-written."""
    r = fresh_replica
    r.start()
    repo = "crash/blobs"
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def pusher(worker: int) -> None:
        n = 0
        with r.client(timeout=10) as c:
            while not stop.is_set():
                n += 1
                data = f"{worker}-{n}-".encode() * 400  # a few KiB, distinct
                digest = sha256(data)
                try:
                    if n % 2:  # POST then PUT with the body: an upload session committed
                        loc = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
                        resp = c.put(f"{loc}?digest={digest}", content=data)
                    else:  # POST with the digest: the monolithic path
                        resp = c.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", content=data)
                except (httpx.HTTPError, KeyError):
                    return
                if resp.status_code == 201:
                    with lock:
                        acked[digest] = data

    threads = [threading.Thread(target=pusher, args=(w,), daemon=True) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    r.kill()  # while eight pushers are mid-request
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 150

    r.start()
    with r.client() as c:
        for digest, data in acked.items():
            got = c.get(f"/v2/{repo}/blobs/{digest}")
            assert got.status_code == 200, (digest, got.text)
            assert got.content == data
