"""Online garbage collection on one real replica: images pushed and pulled with skopeo, blob
files on disk, `moorage gc` and `POST /api/v0/gc` (issue #14 item 1).

The tests share one replica and run in order: the walkthrough leaves no garbage behind, so
each later test knows exactly what is unreferenced."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.process import AUTH, moorage
from harness.replica import Replica

from moorage.cluster.tls import client_tls
from moorage.config import DataDir
from moorage.meta import keys
from moorage.meta.base import Put
from moorage.meta.etcd import EtcdCluster
from tests.gc_images import delete, image, layer, pull_identical, push, write_layout
from tests.oci import MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER, OCI_MANIFEST, push_image, sha256


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    r = Replica(tmp_path_factory.mktemp("gc") / "data")
    r.start()
    yield r
    r.stop()


def gc(r: Replica, *args: str, check: bool = True) -> dict[str, Any]:
    out = moorage("gc", "--existing", r.url, "--json", *args, check=check)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {"stderr": out.stderr}


def listed(result: dict[str, Any]) -> dict[str, set[str]]:
    """The digests a result lists, per repository ("" : no repository links them)."""
    assert result["digests_truncated"] is False
    return {repo: set(u["digests"]) for repo, u in result["repositories"].items()}


def blob_file(r: Replica, digest: str) -> Path:
    algo, hexpart = digest.split(":", 1)
    return r.data_dir / "blobs" / "blobs" / algo / hexpart[:2] / hexpart


def test_walkthrough_dry_run_lists_exactly_the_unshared_layers_and_gc_frees_them(
    replica: Replica, tmp_path: Path
) -> None:
    host = replica.host
    base, shared = layer("base", 256 * 1024), layer("shared", 128 * 1024)
    apps = [
        image(f"v{i}", [base, *([shared] if i < 3 else []), layer(f"app-{i}")], f"app-{i}")
        for i in range(6)
    ]
    libs = [
        image("v0", [base, layer("lib-0")], "lib-0"),
        image("v1", [base, apps[1].layers[-1]], "lib-1"),  # shares app v1's own layer
    ]
    app_layout = write_layout(tmp_path / "app", apps)
    lib_layout = write_layout(tmp_path / "lib", libs)
    for img in apps:
        push(app_layout, img.tag, f"{host}/gc/app:{img.tag}")
    for img in libs:
        push(lib_layout, img.tag, f"{host}/gc/lib:{img.tag}")

    deleted = {("gc/app", apps[0]), ("gc/app", apps[3]), ("gc/app", apps[4]), ("gc/lib", libs[1])}
    for repo, img in deleted:
        delete(f"{host}/{repo}:{img.tag}")
    kept = [("gc/app", img) for img in apps if ("gc/app", img) not in deleted]
    kept += [("gc/lib", libs[0])]

    # Exactly what only the deleted images used: their own layer and config (app v0's
    # "shared" layer and lib v1's layer are still used by kept images), and their manifests.
    expected = {
        "gc/app": {
            d
            for repo, img in deleted
            if repo == "gc/app"
            for d in (sha256(img.config), img.layers[-1].digest)
        },
        "gc/lib": {sha256(libs[1].config)},
        "": {img.digest for _, img in deleted},
    }  # fmt: skip
    expected_bytes = sum(
        len(data)
        for _, img in deleted
        for digest, data in {**img.blobs, img.digest: img.manifest}.items()
        if any(digest in s for s in expected.values())
    )

    # Everything was pushed moments ago: the default grace period keeps it all.
    assert gc(replica, "--dry-run")["blobs"] == 0
    dry = gc(replica, "--dry-run", "--grace", "0")
    assert dry["dry_run"] is True
    assert listed(dry) == expected
    assert dry["blobs"] == 11
    assert dry["bytes"] == expected_bytes
    assert all(blob_file(replica, d).exists() for s in expected.values() for d in s)

    done = gc(replica, "--grace", "0")
    assert done["dry_run"] is False
    assert listed(done) == expected
    assert done["blobs"] == 11
    assert done["bytes"] == expected_bytes
    assert done["rescued"] == 0
    assert not any(blob_file(replica, d).exists() for s in expected.values() for d in s)
    for repo, img in kept:
        pull_identical(f"{host}/{repo}:{img.tag}", img, tmp_path)
    again = gc(replica, "--grace", "0")
    assert again["blobs"] == 0
    assert again["bytes"] == 0

    # The audit log and /metrics have the run.
    with replica.client() as c:
        events = c.get("/api/v0/audit", params={"action": "gc", "since": "1h"}).json()["events"]
        runs = [(e["detail"]["dry_run"], e["detail"]["bytes"], e["outcome"]) for e in events]
        assert ("true", str(expected_bytes), "ok") in runs, runs
        assert ("false", str(expected_bytes), "ok") in runs, runs
        text = c.get("/metrics").text
    assert f"moorage_gc_bytes_freed_total {float(expected_bytes)}" in text, text[-3000:]


def test_grace_period_keeps_a_just_uploaded_unreferenced_blob(replica: Replica) -> None:
    blob = b"uploaded, no manifest yet " * 1000
    digest = sha256(blob)
    with replica.client() as c:
        r = c.post(f"/v2/gc/inflight/blobs/uploads/?digest={digest}", content=blob)
        assert r.status_code == 201, r.text
        result = gc(replica, "--grace", "1h")
        assert result["blobs"] == 0
        assert c.head(f"/v2/gc/inflight/blobs/{digest}").status_code == 200
        assert blob_file(replica, digest).read_bytes() == blob
        # older than a grace of 0: an abandoned push, collected
        result = gc(replica, "--grace", "0")
        assert listed(result) == {"gc/inflight": {digest}}
        assert c.head(f"/v2/gc/inflight/blobs/{digest}").status_code == 404
        assert not blob_file(replica, digest).exists()
        # pushed again: present again
        r = c.post(f"/v2/gc/inflight/blobs/uploads/?digest={digest}", content=blob)
        assert r.status_code == 201, r.text
        assert blob_file(replica, digest).read_bytes() == blob
        assert c.get(f"/v2/gc/inflight/blobs/{digest}").content == blob
    assert listed(gc(replica, "--grace", "0")) == {"gc/inflight": {digest}}  # clean again


def _put(c: httpx.Client, repo: str, ref: str, doc: dict[str, Any], media_type: str) -> str:
    body = json.dumps(doc).encode()
    r = c.put(
        f"/v2/{repo}/manifests/{ref or sha256(body)}",
        content=body,
        headers={"Content-Type": media_type},
    )
    assert r.status_code == 201, r.text
    return sha256(body)


def _small_image(
    c: httpx.Client, repo: str, seed: str, subject: str | None = None
) -> dict[str, Any]:
    config, data = json.dumps({"seed": seed}).encode(), f"layer {seed}".encode() * 300
    for blob in (config, data):
        r = c.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob)
        assert r.status_code == 201, r.text
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": MT_OCI_LAYER, "digest": sha256(data), "size": len(data)}],
    }
    if subject is not None:
        doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
    return doc


def test_untagged_deletes_unreachable_manifests_and_their_referrers(replica: Replica) -> None:
    repo = "gc/untagged"
    with replica.client() as c:
        child_docs = [_small_image(c, repo, f"child-{i}") for i in range(2)]
        children = [_put(c, repo, "", doc, OCI_MANIFEST) for doc in child_docs]
        index = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d, "size": len(json.dumps(doc).encode())}
                for d, doc in zip(children, child_docs, strict=True)
            ],
        }
        _put(c, repo, "multi", index, MT_OCI_INDEX)
        tagged_doc = _small_image(c, repo, "tagged")
        tagged = _put(c, repo, "tagged", tagged_doc, OCI_MANIFEST)
        loose_doc = _small_image(c, repo, "loose")
        loose = _put(c, repo, sha256(json.dumps(loose_doc).encode()), loose_doc, OCI_MANIFEST)
        sig_of_loose = _put(c, repo, "", _small_image(c, repo, "sig-loose", loose), OCI_MANIFEST)
        sig_of_tagged = _put(c, repo, "", _small_image(c, repo, "sig-tagged", tagged), OCI_MANIFEST)

        dry = gc(replica, "--untagged", "--grace", "0", "--dry-run")
        assert dry["manifests"] == 2
        assert set(dry["repositories"][repo]["digests"]) >= {
            loose,
            sig_of_loose,
        }
        done = gc(replica, "--untagged", "--grace", "0")
        assert done["manifests"] == 2
        gone = {loose, sig_of_loose}
        # their bodies, configs and layers went with them (each image's own)
        assert done["blobs"] == 6, done
        for digest in [*children, tagged, sig_of_tagged, loose, sig_of_loose]:
            accept = {"Accept": f"{OCI_MANIFEST}, {MT_OCI_INDEX}"}
            status = c.get(f"/v2/{repo}/manifests/{digest}", headers=accept).status_code
            assert status == (404 if digest in gone else 200), digest
        referrers = c.get(f"/v2/{repo}/referrers/{tagged}").json()["manifests"]
        assert [m["digest"] for m in referrers] == [sig_of_tagged]
        assert c.get(f"/v2/{repo}/referrers/{loose}").json()["manifests"] == []
        for d in tagged_doc["config"]["digest"], tagged_doc["layers"][0]["digest"]:
            assert c.get(f"/v2/{repo}/blobs/{d}").status_code == 200
        for d in loose_doc["config"]["digest"], loose_doc["layers"][0]["digest"]:
            assert c.head(f"/v2/{repo}/blobs/{d}").status_code == 404


def store_of(r: Replica) -> EtcdCluster:
    config = DataDir(r.data_dir).load()
    return EtcdCluster([config.etcd_client_url], tls=client_tls(config))


def test_one_collection_at_a_time(replica: Replica) -> None:
    """A collection holds the cluster's lock: another, by the CLI or the API, is told; a
    dry run, which takes no lock, answers meanwhile."""

    async def hold() -> tuple[EtcdCluster, int]:
        store = store_of(replica)
        held = await store.hold_lock(keys.GC_LOCK, "0123456789ab:feedfacecafebeef", 60, time.time())
        assert isinstance(held, tuple), held
        return store, held[0]

    loop = asyncio.new_event_loop()
    try:
        store, lease = loop.run_until_complete(hold())
        out = moorage("gc", "--existing", replica.url, "--grace", "0", check=False)
        assert out.returncode == 1
        assert "already running (run feedfacecafebeef on replica 0123456789ab" in out.stderr
        r = httpx.post(f"{replica.url}/api/v0/gc", json={"grace": 0}, auth=AUTH, timeout=30)
        assert r.status_code == 423, r.text
        assert r.json()["code"] == "BUSY", r.text
        status = gc(replica, "--status")
        assert status["running"]["run"] == "feedfacecafebeef"
        # A dry run takes no lock: it answers its report while the collection runs.
        dry = gc(replica, "--dry-run")
        assert dry["dry_run"] is True
        assert dry["run"] != "feedfacecafebeef"
        assert gc(replica, "--status")["running"]["run"] == "feedfacecafebeef"
        loop.run_until_complete(store.revoke_lease(lease))
        assert gc(replica, "--dry-run")["dry_run"] is True
        loop.run_until_complete(store.close())
    finally:
        loop.close()


def test_bad_input_gets_clear_errors(replica: Replica) -> None:
    out = moorage("gc", "--existing", replica.url, "--grace", "soon", check=False)
    assert out.returncode == 2
    assert "--grace" in out.stderr
    assert "24h" in out.stderr
    r = httpx.post(f"{replica.url}/api/v0/gc", json={"grace": "forever"}, auth=AUTH, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "INVALID", r.text
    r = httpx.post(f"{replica.url}/api/v0/gc", json={"dry_run": "yes"}, auth=AUTH, timeout=30)
    assert r.status_code == 400, r.text
    assert "dry_run" in r.json()["error"], r.text
    r = httpx.post(f"{replica.url}/api/v0/gc", json={"grace": 0}, timeout=30)
    assert r.status_code == 401


def test_scheduled_collection_runs_once_per_interval_on_one_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two API workers look at the schedule twice a second; one runs it, once per interval."""
    monkeypatch.setenv("MOORAGE_GC_SCHEDULE_CHECK", "0.5")
    r = Replica(tmp_path / "data", workers=2)
    r.start()
    try:
        out = moorage("gc", "--existing", r.url, "--schedule", "1h", "--grace", "0", "--json")
        assert json.loads(out.stdout)["schedule"] == {
            "interval": 3600.0,
            "grace": 0.0,
            "untagged": False,
        }
        deadline = time.monotonic() + 30
        while (last := gc(r, "--status")["last"]) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last is not None
        assert last["started_by"] == "moorage"
        assert last["dry_run"] is False
        time.sleep(3)  # both workers look several more times: not due again
        with r.client() as c:
            events = c.get("/api/v0/audit", params={"action": "gc", "since": "1h"}).json()["events"]
        assert [e["actor"] for e in events] == ["moorage"], events
        status = gc(r, "--status")
        assert status["last"]["run"] == last["run"]
        assert status["schedule"]["interval"] == 3600.0
        off = moorage("gc", "--existing", r.url, "--schedule", "off", "--json")
        assert json.loads(off.stdout) == {"schedule": None}
    finally:
        r.stop()


def test_a_dead_runs_tombstones_are_finished_without_waiting_for_the_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection killed mid-run leaves tombstones: pushes of those blobs are refused
    (HEAD 404, the upload waits then 503) until a run finishes them. With no schedule at
    all, a worker starts one as soon as no run holds the lock: the referenced blob's
    tombstone is cleared (HEAD 200 again), the unreferenced one is deleted (a dead run's
    tombstone, whatever its age), and the run is audited."""
    monkeypatch.setenv("MOORAGE_GC_SCHEDULE_CHECK", "0.5")
    r = Replica(tmp_path / "data")
    r.start()
    try:
        kept = json.loads(push_image(r, "dead/kept", "v1", "kept"))
        gone_body = push_image(r, "dead/gone", "v1", "gone")
        gone = json.loads(gone_body)
        with r.client() as c:
            assert c.delete(f"/v2/dead/gone/manifests/{sha256(gone_body)}").status_code == 202
        kept_layer, gone_layer = kept["layers"][0]["digest"], gone["layers"][0]["digest"]

        async def tombstone() -> None:
            store = store_of(r)
            try:
                value = json.dumps({"run": "deadbeefdeadbeef", "at": time.time()}).encode()
                for digest in (kept_layer, gone_layer):
                    await store._txn([], [Put(keys.blob_tombstone(digest), value)])
            finally:
                await store.close()

        asyncio.run(tombstone())
        with r.client() as c:
            assert c.head(f"/v2/dead/kept/blobs/{kept_layer}").status_code == 404
            assert c.get(f"/v2/dead/kept/blobs/{kept_layer}").status_code == 200  # a pull
            deadline = time.monotonic() + 60
            while c.head(f"/v2/dead/kept/blobs/{kept_layer}").status_code != 200:
                assert time.monotonic() < deadline, "the dead run's tombstones still stand"
                time.sleep(0.2)
            last = gc(r, "--status")["last"]
            assert last is not None
            assert last["grace"] == 24 * 3600.0  # no schedule: the default grace
            assert c.head(f"/v2/dead/gone/blobs/{gone_layer}").status_code == 404
        assert not blob_file(r, gone_layer).exists()
        assert blob_file(r, kept_layer).exists()
        pull_image_from(r, "dead/kept", "v1")
    finally:
        r.stop()


def pull_image_from(r: Replica, repo: str, tag: str) -> None:
    with r.client() as c:
        doc = c.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}).json()
        for desc in [doc["config"], *doc["layers"]]:
            blob = c.get(f"/v2/{repo}/blobs/{desc['digest']}")
            assert blob.status_code == 200
            assert sha256(blob.content) == desc["digest"]
