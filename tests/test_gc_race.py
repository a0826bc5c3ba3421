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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import pytest

from tests.cluster import AUTH, OCI_MANIFEST, Cluster, cluster_of
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
    with cluster_of(2, tmp_path_factory.mktemp("gcrace")) as c:
        yield c


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


class Target(Protocol):
    """A replica to push to, delete through and collect on (tests.cluster.Node, harness Replica)."""

    @property
    def url(self) -> str: ...

    def client(self) -> httpx.Client: ...


@dataclass
class Race:
    """What `race` did: the images acknowledged, those deleted, the collections' results."""

    pushed: list[Pushed] = field(default_factory=list)
    deleted: set[tuple[str, str]] = field(default_factory=set)
    runs: list[dict[str, Any]] = field(default_factory=list)
    busy: int = 0
    retries: list[int] = field(default_factory=list)

    def live(self) -> list[Pushed]:
        return [p for p in self.pushed if (p.repo, p.tag) not in self.deleted]

    def summary(self) -> str:
        freed = sum(int(r["blobs"]) for r in self.runs)
        return (
            f"{len(self.runs)} runs ({self.busy} busy), {freed} blobs freed, retries {self.retries}"
        )


def race(
    nodes: Sequence[Target],
    prefix: str,
    *,
    pushers: int,
    images: int,
    collectors: int = 1,
    seed: int = 7,
    timeout: float = 600,
) -> Race:
    """`pushers` threads push `images` images each like a client (through the nodes in turn),
    a deleter deletes acknowledged ones, and `collectors` threads run collections with a
    grace of 0 back to back (every other one --untagged) until the pushers are done."""
    out = Race()
    lock = threading.Lock()
    done = threading.Event()
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
        repo = f"{prefix}/p{n}"
        for i in range(images):
            node = nodes[(n + i) % len(nodes)]
            manifest, blobs = build(f"{prefix}-{n}-{i}", i)
            with node.client() as c:
                out.retries.append(push_like_a_client(c, repo, f"t{i}", manifest, blobs))
            with lock:
                out.pushed.append(Pushed(repo, f"t{i}", manifest, blobs))

    @guard
    def deleter() -> None:
        rnd = random.Random(seed)
        while not done.is_set():
            time.sleep(0.15)
            with lock:
                live = out.live()
            if len(live) < 3:
                continue
            victim = rnd.choice(live)
            with rnd.choice(nodes).client() as c:
                r = c.delete(f"/v2/{victim.repo}/manifests/{sha256(victim.manifest)}")
            assert r.status_code == 202, r.text
            with lock:
                out.deleted.add((victim.repo, victim.tag))

    @guard
    def collector() -> None:
        i = 0
        while not done.is_set():
            node = nodes[i % len(nodes)]
            body = {"grace": 0, "untagged": i % 2 == 1}
            r = httpx.post(f"{node.url}/api/v0/gc", json=body, auth=AUTH, timeout=120)
            if r.status_code == 423:
                out.busy += 1
            else:
                assert r.status_code == 200, r.text
                out.runs.append(r.json())
            i += 1

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(pushers)]
    others = [threading.Thread(target=deleter)]
    others += [threading.Thread(target=collector) for _ in range(collectors)]
    for t in [*threads, *others]:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    done.set()
    for t in others:
        t.join(timeout=300)
    assert errors == [], errors
    return out


def test_gc_racing_pushes_and_deletes_loses_no_acknowledged_image(cluster: Cluster) -> None:
    nodes = cluster.nodes
    result = race(nodes, "race", pushers=PUSHERS, images=IMAGES_PER_PUSHER, collectors=2)
    summary = result.summary()
    print(summary)
    assert len(result.pushed) == PUSHERS * IMAGES_PER_PUSHER, summary
    assert len(result.runs) >= 3, summary
    assert sum(int(r["blobs"]) for r in result.runs) > 0, summary
    assert result.deleted, summary

    # Every acknowledged image not deleted pulls byte-identical from both replicas.
    for node in nodes:
        check_pulls(node, result.live())
    # A last collection frees exactly what the deletes left unreferenced; then nothing.
    final = httpx.post(f"{nodes[0].url}/api/v0/gc", json={"grace": 0}, auth=AUTH, timeout=120)
    assert final.status_code == 200, final.text
    for node in nodes:
        check_pulls(node, result.live())
    again = httpx.post(f"{nodes[1].url}/api/v0/gc", json={"grace": 0}, auth=AUTH, timeout=120)
    assert again.json()["blobs"] == 0, (again.json(), summary)


def check_pulls(node: Target, images: list[Pushed]) -> None:
    with node.client() as c:
        for p in images:
            r = c.get(f"/v2/{p.repo}/manifests/{p.tag}", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200, (node.url, p.repo, p.tag, r.text)
            assert r.content == p.manifest
            for digest, data in p.blobs.items():
                blob = c.get(f"/v2/{p.repo}/blobs/{digest}")
                assert blob.status_code == 200, (node.url, p.repo, p.tag, digest, blob.text)
                assert blob.content == data, (p.repo, p.tag, digest)
