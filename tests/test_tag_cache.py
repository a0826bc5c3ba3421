"""The tag cache of the API processes (meta/tag_cache.py) on a 3-replica cluster: a tag deleted
or pointed at another manifest through one replica is never served with its old manifest by
another once the change was acknowledged, under concurrent GET load, with a replica whose
watch is stalled, and pulls still work when quorum is lost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster import OCI_MANIFEST, Cluster, Node, cluster_of
from tests.oci import MT_OCI_CONFIG, sha256

ENV = {"MOORAGE_TEST_HOOKS": "1"}
REPO = "cache/app"
VERSIONS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(3, tmp_path_factory.mktemp("tagcache"), env=ENV) as c:
        yield c


def manifests(c: httpx.Client) -> list[tuple[str, bytes]]:
    """VERSIONS manifests of REPO (their configs pushed): (digest, body) each."""
    out = []
    for i in range(VERSIONS):
        config = json.dumps({"architecture": "amd64", "os": "linux", "version": i}).encode()
        r = c.post(f"/v2/{REPO}/blobs/uploads/?digest={sha256(config)}", content=config)
        assert r.status_code == 201, r.text
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": MT_OCI_CONFIG,
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": [],
            }
        ).encode()
        out.append((sha256(body), body))
    return out


def put(c: httpx.Client, tag: str, body: bytes) -> float:
    """PUT the manifest as `tag`; the seconds it took."""
    started = time.monotonic()
    r = c.put(f"/v2/{REPO}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    return time.monotonic() - started


def served(c: httpx.Client, tag: str) -> str | None:
    """The digest `c`'s replica serves for `tag` (None: 404), by GET and by HEAD."""
    got = c.get(f"/v2/{REPO}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    head = c.head(f"/v2/{REPO}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert got.status_code == head.status_code, (got.status_code, head.status_code)
    if got.status_code == 404:
        return None
    assert got.status_code == 200, got.text
    assert head.headers["Docker-Content-Digest"] == got.headers["Docker-Content-Digest"]
    return got.headers["Docker-Content-Digest"]


def cache_hits(c: httpx.Client) -> int:
    text = c.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("moorage_tag_cache_hits_total "))
    return int(float(line.split()[1]))


def serving(c: httpx.Client) -> bool:
    # the sample's own line (its HELP line starts with the same words)
    return "moorage_tag_cache_serving 1" in c.get("/metrics").text.splitlines()


def wait_serving(*clients: httpx.Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(serving(c) for c in clients):
        assert time.monotonic() < deadline, "the tag caches did not turn on"
        time.sleep(0.1)


def test_caches_join_when_the_workers_start(cluster: Cluster) -> None:
    """First in this module: no registry request has reached any replica yet. Each cache
    is live (a member, its watch open) anyway: a writer whose own cache has not joined
    waits for the other members' periodic reports, which made the first pushes after a
    start take up to a second."""
    clients = [node.client() for node in cluster.nodes]
    try:
        wait_serving(*clients)
    finally:
        for c in clients:
            c.close()


def test_changed_tag_is_never_served_stale_under_load(cluster: Cluster) -> None:
    a, b, c = cluster.nodes[:3]
    with a.client() as ca, b.client() as cb, c.client() as cc:
        versions = manifests(ca)
        put(ca, "load", versions[0][1])
        put(ca, "moving", versions[0][1])
        wait_serving(ca, cb, cc)
        stop = threading.Event()
        errors: list[str] = []

        def load(node: Node) -> None:  # GET load on the same replicas, same and other tags
            with node.client() as client:
                while not stop.is_set():
                    for tag in ("load", "moving"):
                        r = client.get(f"/v2/{REPO}/manifests/{tag}")
                        if r.status_code not in (200, 404):
                            errors.append(f"{node.name}: {r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=load, args=(n,)) for n in (b, c)]
        for t in threads:
            t.start()
        try:
            hits_before = cache_hits(cb) + cache_hits(cc)
            for i in range(1, 25):
                digest, body = versions[i % VERSIONS]
                for client in (cb, cc):
                    served(client, "moving")  # cached before the change
                put(ca, "moving", body)  # re-pointed on A ...
                assert served(cb, "moving") == digest, f"B served a stale tag, round {i}"
                assert served(cc, "moving") == digest, f"C served a stale tag, round {i}"
                if i % 4 == 0:
                    assert ca.delete(f"/v2/{REPO}/manifests/moving").status_code == 202
                    assert served(cb, "moving") is None, f"B served a deleted tag, round {i}"
                    assert served(cc, "moving") is None, f"C served a deleted tag, round {i}"
                    put(ca, "moving", body)
            hits = cache_hits(cb) + cache_hits(cc) - hits_before
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:5]
        assert hits > 50, f"the caches served only {hits} tags: the test proves nothing"


def test_stalled_watch_never_serves_stale(cluster: Cluster) -> None:
    a, b, c = cluster.nodes[:3]
    stall = b.data_dir / "tag-watch.stall"
    with a.client() as ca, b.client() as cb, c.client() as cc:
        versions = manifests(ca)
        put(ca, "stalled", versions[0][1])
        wait_serving(ca, cb, cc)
        assert served(cb, "stalled") == versions[0][0]
        assert served(cb, "stalled") == versions[0][0]  # from B's cache now
        stall.touch()  # B's watch applies nothing more; its keep-alives go on
        try:
            took = put(ca, "stalled", versions[1][1])
            for _ in range(20):
                assert served(cb, "stalled") == versions[1][0], "B served a stale tag"
                assert served(cc, "stalled") == versions[1][0]
            # B was waited for, then its lease revoked and its cache given time to stop
            assert took >= 2.0, f"the re-point did not wait for the stalled cache ({took:.2f} s)"
            assert ca.delete(f"/v2/{REPO}/manifests/stalled").status_code == 202
            assert served(cb, "stalled") is None
        finally:
            stall.unlink()
        put(ca, "stalled", versions[2][1])
        wait_serving(cb)  # B re-registered with a fresh watch and an empty cache
        assert served(cb, "stalled") == versions[2][0]
        took = put(ca, "stalled", versions[3][1])
        assert served(cb, "stalled") == versions[3][0]
        assert took < 2.0, f"a healthy cluster still waited {took:.2f} s"


def test_a_push_of_the_digest_a_pending_re_point_set_waits_for_it(cluster: Cluster) -> None:
    """t names X; B re-points it to Y and waits for C, whose watch is stalled; A pushes t -> Y
    meanwhile (what t names by then: no re-point of its own). A answered at once, and C served
    X for up to 2.7 s after A's 201 (a probe's finding). Now A waits for C as B does."""
    a, b, c = cluster.nodes[:3]
    stall = c.data_dir / "tag-watch.stall"
    with a.client() as ca, b.client() as cb, c.client() as cc:
        versions = manifests(ca)
        (x, body_x), (y, body_y) = versions[0], versions[1]
        put(ca, "follow", body_x)
        wait_serving(ca, cb, cc)
        assert served(cc, "follow") == x
        assert served(cc, "follow") == x  # from C's cache now
        stall.touch()  # C's watch applies nothing more; its keep-alives go on
        try:
            b_push = threading.Thread(target=put, args=(cb, "follow", body_y))
            b_push.start()
            deadline = time.monotonic() + 10
            # B's re-point is committed (B still waits): one GET (a GET and a HEAD may see
            # either side of the commit)
            while ca.head(f"/v2/{REPO}/manifests/follow").headers.get("Docker-Content-Digest") != y:
                assert time.monotonic() < deadline, "B's re-point never showed on A"
                time.sleep(0.02)
            assert b_push.is_alive(), "B did not wait for the stalled cache"
            put(ca, "follow", body_y)  # the same digest, as A sees it
            after = [served(cc, "follow") for _ in range(10)]
            b_push.join()
        finally:
            stall.unlink()
        assert after == [y] * 10, f"C served the old digest after A's 201: {after}"


def test_pulls_by_tag_survive_quorum_loss(cluster: Cluster) -> None:
    """Last in the module: it leaves the cluster without quorum."""
    a, b, c = cluster.nodes[:3]
    with a.client() as ca:
        versions = manifests(ca)
        put(ca, "kept", versions[2][1])
        assert served(ca, "kept") == versions[2][0]
        cluster.kill_and_wait(b, c)
        for _ in range(5):
            assert served(ca, "kept") == versions[2][0]
        assert served(ca, "never-pushed") is None
