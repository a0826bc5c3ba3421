"""No cluster restores onto, or collects garbage in, a blob storage another cluster uses.

Each replica marks the storage it uses (`probe/present-<cluster>@<replica>`, every 30 s;
moorage.storage.presence). A restore given the storage of another, running cluster is
refused before anything changes, and a garbage collection refuses to run while another
cluster's marker is fresh (it would delete that cluster's blobs); a marker left by a replica
that stopped cleanly is gone, one left by a killed replica counts until it is 3 minutes old.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from chaos.images import make_image, push, verify
from harness.process import free_port, moorage
from harness.replica import Replica

from moorage.storage import presence
from moorage.storage.filesystem import FilesystemStorage


def _markers(storage: Path) -> list[str]:
    probe = storage / "probe"
    return sorted(p.name for p in probe.iterdir() if p.name.startswith(presence.PREFIX))


def _wait_for_marker(storage: Path) -> list[str]:
    deadline = time.monotonic() + 60
    while not (found := _markers(storage)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found, "the replica never marked its storage"
    return found


def test_markers_say_which_other_clusters_are_live(tmp_path: Path) -> None:
    async def go() -> None:
        storage = FilesystemStorage(tmp_path / "s")
        await presence.mark(storage, "mine", "r1")
        await presence.mark(storage, "theirs", "r2")
        await presence.mark(storage, "gone", "r3")
        old = time.time() - presence.FRESH_SECONDS - 10
        os.utime(tmp_path / "s" / "probe" / presence.marker_name("gone", "r3"), (old, old))
        found = await presence.others(storage, "mine")
        assert [(o.cluster_id, o.replica_id) for o in found] == [("theirs", "r2")]
        assert "in use by another cluster: cluster theirs" in presence.refusal(found, "S", "x")
        await presence.unmark(storage, "theirs", "r2")
        await presence.unmark(storage, "theirs", "r2")  # twice: nothing to do
        assert await presence.others(storage, "mine") == []

    asyncio.run(go())


def test_restore_and_collection_keep_off_another_clusters_storage(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    live = Replica(tmp_path / "live", storage=shared)
    other = Replica(tmp_path / "other")
    live.start()
    other.start()
    try:
        image = make_image("presence/app")
        with live.client() as c:
            push(c, "presence/app", "v1", image)
        mine = _wait_for_marker(shared)
        # A backup of another cluster, restored onto the live cluster's storage: refused.
        archive = tmp_path / "other.tar"
        moorage("backup", "--existing", other.url, "--out", str(archive))
        target = tmp_path / "restored"
        out = moorage(
            "restore", "--yes", "--in", str(archive), "--data-dir", str(target),
            "--http-addr", f"127.0.0.1:{free_port()}", "--storage", str(shared),
            "--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port()),
            check=False,
        )  # fmt: skip
        assert out.returncode != 0
        assert "in use by another cluster" in out.stderr + out.stdout, out
        assert "Traceback" not in out.stderr
        assert not target.exists()  # nothing was changed
        # Another cluster's fresh marker stops a collection (and its dry run)...
        foreign = shared / "probe" / presence.marker_name("f" * 32, "abcdef012345")
        foreign.write_text("0\n")
        with live.client(timeout=120) as c:
            for body in ({"grace": 0}, {"grace": 0, "dry_run": True}):
                r = c.post("/api/v0/gc", json=body)
                assert r.status_code >= 400, r.text
                assert "in use by another cluster" in r.text
            # ... until it is old (a killed replica's), then the collection runs.
            old = time.time() - presence.FRESH_SECONDS - 10
            os.utime(foreign, (old, old))
            r = c.post("/api/v0/gc", json={"grace": 0})
            assert r.status_code == 200, r.text
            assert verify(c, "presence/app", "v1", image.digest, image.blob_digests) == ""
    finally:
        other.stop()
        live.stop()
    # A clean stop takes the replica's marker away.
    assert not set(mine) & set(_markers(shared))
