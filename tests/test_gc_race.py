"""Garbage collection racing pushes and deletes through two replicas (issue #14 item 1).

Pushers push images that share layers the way a client does (HEAD each blob, upload the
missing ones, then PUT the manifest; a refused push is pushed again from the start), a
deleter deletes some acknowledged images, and collections with a grace period of 0 run
back to back through both replicas, half of them with --untagged. At the end every image
that was acknowledged and not deleted pulls byte-identical from both replicas, and one more
collection leaves no blob that nothing references."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.cluster import AUTH, OCI_MANIFEST, Cluster, Node
from tests.oci import MT_OCI_CONFIG, MT_OCI_LAYER, sha256

PUSHERS = 3
IMAGES_PER_PUSHER = 14
SHARED = [f"shared layer {i} ".encode() * (2000 + 300 * i) for i in range(5)]


@dataclass(frozen=True)
class Pushed:
    repo: str
    tag: str
    manifest: bytes
    blobs: dict[str, bytes]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("gcrace"))
    try:
        c.install()
        c.join()
        yield c
    finally:
        c.shutdown()


def build(seed: str, index: int) -> tuple[bytes, dict[str, bytes]]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    own = f"own layer of {seed} ".encode() * 700
    layers = [SHARED[index % len(SHARED)], SHARED[(index + 2) % len(SHARED)], own]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": MT_OCI_LAYER, "digest": sha256(x), "size": len(x)} for x in layers
            ],
        }
    ).encode()
    return manifest, {sha256(b): b for b in (config, *layers)}


def push_like_a_client(
    c: httpx.Client, repo: str, tag: str, manifest: bytes, blobs: dict[str, bytes]
) -> int:
    """HEAD, upload what is missing, PUT the manifest; pushed again from the start when a
    step is refused (a blob being collected). The number of attempts it took."""
    for attempt in range(1, 30):
        refused = False
        for digest, data in blobs.items():
            if c.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
                continue
            r = c.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", content=data)
            if r.status_code != 201:
                assert r.status_code == 503, r.text  # garbage collection deleting it: retry
                refused = True
                break
        if not refused:
            r = c.put(
                f"/v2/{repo}/manifests/{tag}",
                content=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            if r.status_code == 201:
                return attempt
            assert r.status_code in (400, 503), r.text
            if r.status_code == 400:
                assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", r.text
        time.sleep(0.05)
    raise AssertionError(f"{repo}:{tag} was refused 30 times")


def test_gc_racing_pushes_and_deletes_loses_no_acknowledged_image(cluster: Cluster) -> None:
    nodes = cluster.nodes
    pushed: list[Pushed] = []
    deleted: set[tuple[str, str]] = set()
    lock = threading.Lock()
    done = threading.Event()
    retries: list[int] = []
    runs: list[dict[str, object]] = []
    busy = [0]
    errors: list[str] = []

    def guard(fn: Callable[..., None]) -> Callable[..., None]:
        def run(*args: object) -> None:
            try:
                fn(*args)
            except BaseException as exc:  # reported by the main thread
                errors.append(f"{fn.__name__}: {exc!r}")
                done.set()

        return run

    @guard
    def pusher(n: int) -> None:
        repo = f"race/p{n}"
        for i in range(IMAGES_PER_PUSHER):
            node = nodes[(n + i) % len(nodes)]
            manifest, blobs = build(f"{n}-{i}", i)
            with node.client() as c:
                retries.append(push_like_a_client(c, repo, f"t{i}", manifest, blobs))
            with lock:
                pushed.append(Pushed(repo, f"t{i}", manifest, blobs))

    @guard
    def deleter() -> None:
        rnd = random.Random(7)
        while not done.is_set():
            time.sleep(0.15)
            with lock:
                live = [p for p in pushed if (p.repo, p.tag) not in deleted]
            if len(live) < 3:
                continue
            victim = rnd.choice(live)
            node = rnd.choice(nodes)
            with node.client() as c:
                r = c.delete(f"/v2/{victim.repo}/manifests/{sha256(victim.manifest)}")
            assert r.status_code == 202, r.text
            with lock:
                deleted.add((victim.repo, victim.tag))

    @guard
    def collector() -> None:
        i = 0
        while not done.is_set():
            node = nodes[i % len(nodes)]
            body = {"grace": 0, "untagged": i % 2 == 1}
            r = httpx.post(f"{node.url}/api/v0/gc", json=body, auth=AUTH, timeout=120)
            if r.status_code == 423:
                busy[0] += 1
            else:
                assert r.status_code == 200, r.text
                runs.append(r.json())
            i += 1

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(PUSHERS)]
    others = [threading.Thread(target=deleter), threading.Thread(target=collector)]
    others.append(threading.Thread(target=collector))
    for t in [*threads, *others]:
        t.start()
    for t in threads:
        t.join(timeout=600)
    done.set()
    for t in others:
        t.join(timeout=300)
    assert errors == [], errors

    freed = sum(int(str(r["blobs"])) for r in runs)
    summary = f"{len(runs)} runs ({busy[0]} busy), {freed} blobs freed, retries {retries}"
    print(summary)
    assert len(pushed) == PUSHERS * IMAGES_PER_PUSHER, summary
    assert len(runs) >= 3, summary
    assert freed > 0, summary
    assert deleted, summary

    # Every acknowledged image not deleted pulls byte-identical from both replicas.
    for node in nodes:
        check_pulls(node, [p for p in pushed if (p.repo, p.tag) not in deleted])
    # A last collection frees exactly what the deletes left unreferenced; then nothing.
    final = httpx.post(f"{nodes[0].url}/api/v0/gc", json={"grace": 0}, auth=AUTH, timeout=120)
    assert final.status_code == 200, final.text
    for node in nodes:
        check_pulls(node, [p for p in pushed if (p.repo, p.tag) not in deleted])
    again = httpx.post(f"{nodes[1].url}/api/v0/gc", json={"grace": 0}, auth=AUTH, timeout=120)
    assert again.json()["blobs"] == 0, (again.json(), summary)


def check_pulls(node: Node, images: list[Pushed]) -> None:
    with node.client() as c:
        for p in images:
            r = c.get(f"/v2/{p.repo}/manifests/{p.tag}", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200, (node.url, p.repo, p.tag, r.text)
            assert r.content == p.manifest
            for digest, data in p.blobs.items():
                blob = c.get(f"/v2/{p.repo}/blobs/{digest}")
                assert blob.status_code == 200, (node.url, p.repo, p.tag, digest, blob.text)
                assert blob.content == data, (p.repo, p.tag, digest)
