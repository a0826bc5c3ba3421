"""Backup archives are read without trusting them (issue 9, items 2 and 5): tampered
records, odd or compressed members, base names with a path and incrementals whose base
lacks what the header claims are refused with a list, never with a traceback; an online
backup reads blob storage at its revision, so concurrent deletes do not break it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from moorage.errors import MoorageError
from moorage.oci import mediatypes as mt
from moorage.recovery import backup
from moorage.recovery.client import AdminClient
from tests.cluster import (
    ADMIN_PASSWORD,
    OCI_MANIFEST,
    Cluster,
    Node,
    moorage,
    pull_image,
    push_image,
    sha256,
)
from tests.test_backup_format import FORMAT_1

#: The admin account inside tests/fixtures/backup-v1.tar (the tests' password when it was written).
FORMAT_1_ADMIN = ("admin", "test-admin-password")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.shutdown()


def read_members(archive: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(archive, "r:") as tar:
        out = []
        for info in tar:
            f = tar.extractfile(info)
            out.append((info.name, f.read() if f else b""))
        return out


def write_archive(path: Path, members: list[tuple[str, bytes]], sums: bool = True) -> Path:
    """A tar of `members` with a SHA256SUMS recomputed over them (what a forger can do)."""
    members = [(n, d) for n, d in members if n != "SHA256SUMS"]
    if sums:
        listing = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in members)
        members.append(("SHA256SUMS", listing.encode()))
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def edit(
    archive: Path, out: Path, change: Callable[[str, bytes], bytes | None], sums: bool = True
) -> Path:
    members = []
    for name, data in read_members(archive):
        new = change(name, data)
        if new is not None:
            members.append((name, new))
    return write_archive(out, members, sums)


def edit_json(name: str, fn: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:  # type: ignore[type-arg]
    def change(member: str, data: bytes) -> bytes:
        if member != name:
            return data
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()

    return change


def forge_format_1(name: str, data: bytes) -> bytes:
    """Forged keys and values in a format-1 archive (SHA256SUMS recomputed by `edit`)."""
    if name != "metadata.json":
        return data
    doc = json.loads(data)
    kvs = doc["kvs"]
    manifest = next(k for k, _ in kvs if k.startswith("/moorage/manifests/old/app@"))
    digest = manifest.rpartition("@")[2]
    tag = {"digest": "sha256:/etc/passwd", "media_type": mt.OCI_MANIFEST, "size": 10}
    kvs.append(["/moorage/tags/old/app@evil", json.dumps(tag)])
    kvs.append(["/moorage/tags/old/app@../x", json.dumps(dict(tag, digest=digest))])
    kvs.append(["/moorage/repos/../../etc", "{}"])
    mtype = {"digest": digest, "media_type": "text/html", "size": 10}
    kvs.append([manifest, json.dumps(mtype)])
    kvs.append(["/moorage/blobs/old/app@sha256:../../y", '{"size": 1}'])
    kvs.append(["/etc/passwd", "{}"])
    return json.dumps(doc).encode()


def refused(*args: str) -> str:
    """Run a command that must fail cleanly (exit 1, a message, no traceback)."""
    out = moorage(*args, check=False)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip()
    return out.stderr


def refused_everywhere(cluster: Cluster, archive: Path) -> str:
    """`backup verify`, `backup inspect`-free: verify and restore both refuse it, and the
    restore touches nothing."""
    verdict = refused("backup", "verify", str(archive))
    target = Node(cluster.root, f"restore-{archive.stem}")
    refused(
        "restore", "--yes", "--in", str(archive), *target.flags(),
        "--storage", str(cluster.root / f"storage-{archive.stem}"),
    )  # fmt: skip
    assert not target.data_dir.exists()
    assert not (cluster.root / f"storage-{archive.stem}").exists()
    return verdict


def test_tampered_and_malformed_archives_are_refused(cluster: Cluster) -> None:
    r0 = cluster.install()
    body = push_image(r0, "hard/app", "v1", "hard")
    good = cluster.root / "good.tar"
    moorage("backup", "--existing", r0.url, "--out", str(good), "--include-blobs")
    assert "OK" in moorage("backup", "verify", str(good)).stdout
    t = cluster.root

    # 1. Records changed and SHA256SUMS recomputed: every invalid record is listed.
    def forge(doc: dict) -> None:  # type: ignore[type-arg]
        records = doc["records"]
        tag = {"kind": "tag", "repo": "hard/app", "tag": "evil", "media_type": mt.OCI_MANIFEST}
        records.append(dict(tag, digest="sha256:/etc/passwd", size=10))
        records.append(dict(tag, tag="evil2", digest="sha256:../../x", size=10))
        records.append(dict(tag, tag="../x", digest=sha256(body), size=10))
        records.append({"kind": "repository", "repo": "../../etc"})
        records.append(
            {"kind": "manifest", "repo": "hard/app", "digest": sha256(body),
             "media_type": "text/html", "size": len(body)}
        )  # fmt: skip
        records.append({"kind": "blob_link", "repo": "hard/app", "digest": "sha256:../../y"})
        records.append({"kind": "/etc/passwd"})

    tampered = edit(good, t / "tampered.tar", edit_json("metadata.json", forge))
    verdict = refused_everywhere(cluster, tampered)
    for needle in (
        "7 invalid record(s)",
        "sha256:/etc/passwd",
        "sha256:../../x",
        "invalid tag '../x'",
        "../../etc",
        "text/html",
        "unexpected or missing fields",
        "unknown kind '/etc/passwd'",
    ):
        assert needle in verdict, (needle, verdict)
    # The same forgeries in a format-1 archive (keys and values) are refused alike.
    verdict = refused_everywhere(cluster, edit(FORMAT_1, t / "tampered-1.tar", forge_format_1))
    for needle in (
        "6 invalid record(s)",
        "sha256:/etc/passwd",
        "old/app@../x",
        "../../etc",
        "text/html",
        "sha256:../../y",
        "/etc/passwd'",
    ):
        assert needle in verdict, (needle, verdict)

    # 2. Odd member names, a member that is no regular file, a duplicate.
    odd = write_archive(
        t / "odd.tar",
        [
            *read_members(good),
            ("../../etc/cron.d/x", b"x"),
            ("blobs/sha256/../../../x", b"x"),
            ("blobs/md5/abc", b"x"),
            ("blobs/x", b"x"),
            ("blobs/sha256/" + "a" * 64 + ".gz", gzip.compress(b"x")),
            ("metadata.json", b"{}"),
        ],
    )
    verdict = refused_everywhere(cluster, odd)
    for needle in ("../../etc/cron.d/x", "blobs/md5/abc", "'blobs/x'", ".gz", "appears twice"):
        assert needle in verdict, (needle, verdict)
    link = t / "link.tar"
    with tarfile.open(link, "w") as tar:
        for name, data in read_members(good):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("blobs/sha256/" + "b" * 64)
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    assert "not a regular file" in refused("backup", "verify", str(link))

    # 3. Compressed: never decompressed. A gzipped archive, and a gzipped record member.
    gz = t / "gz.tar"
    gz.write_bytes(gzip.compress(good.read_bytes()))
    assert "uncompressed tar" in refused_everywhere(cluster, gz)
    bomb = edit(good, t / "bomb.tar", lambda n, d: gzip.compress(d) if n == "metadata.json" else d)
    assert "metadata.json is not valid JSON" in refused_everywhere(cluster, bomb)

    # 4. A record member larger than what is read (the limit stands for a 10 GB member).
    out = moorage("backup", "verify", str(good), check=False)
    assert out.returncode == 0
    import os
    import subprocess

    from harness.process import moorage_cmd

    small = subprocess.run(
        moorage_cmd("backup", "verify", str(good)), capture_output=True, text=True,
        env=dict(os.environ, MOORAGE_BACKUP_MAX_METADATA_BYTES="100"),
    )  # fmt: skip
    assert small.returncode == 1
    assert "Traceback" not in small.stderr
    assert "MOORAGE_BACKUP_MAX_METADATA_BYTES" in small.stderr

    # 5. Base archive names with a path: never opened.
    (t / "x").write_bytes(good.read_bytes())
    for base in ("../../x", "/etc/passwd", "..", "sub/x"):

        def chain(doc: dict, base: str = base) -> None:  # type: ignore[type-arg]
            doc["base"] = base
            doc["base_chain"] = [base]

        evil = edit(good, t / "evil-base.tar", edit_json("backup.json", chain))
        assert "not a plain file name" in refused_everywhere(cluster, evil)
        assert "not a plain file name" in refused(
            "backup", "--existing", r0.url, "--out", str(t / "inc.tar"), "--since", str(evil)
        )
        assert not (t / "inc.tar").exists()

    # 6. Header: a digest with ../ in the list of blobs; no digest path is built from it.
    def header(doc: dict) -> None:  # type: ignore[type-arg]
        doc["blobs_in_archive"].append("sha256:../../../etc/passwd")

    evil = edit(good, t / "evil-header.tar", edit_json("backup.json", header))
    assert "invalid digest 'sha256:../../../etc/passwd'" in refused_everywhere(cluster, evil)
    # A header that claims a blob the archive does not hold.
    gone = sha256(body)
    drop = edit(good, t / "drop.tar", lambda n, d: None if n == backup.blob_member(gone) else d)
    assert f"lists blob {gone}" in refused_everywhere(cluster, drop)
    # Not a tar at all, and an empty file.
    (t / "junk.tar").write_bytes(b"junk" * 1000)
    refused("backup", "verify", str(t / "junk.tar"))
    refused("backup", "inspect", str(t / "junk.tar"))
    (t / "empty.tar").write_bytes(b"")
    refused("backup", "verify", str(t / "empty.tar"))
    # The good archive still restores.
    fresh = Node(cluster.root, "fresh")
    moorage("stop", "--data-dir", str(r0.data_dir))
    moorage("restore", "--yes", "--in", str(good), *fresh.flags(), "--storage", str(t / "s2"))
    cluster.nodes.append(fresh)
    assert pull_image(fresh, "hard/app", "v1") == body


def test_incremental_whose_base_lacks_claimed_blobs_fails(cluster: Cluster) -> None:
    r0 = cluster.install()
    first = push_image(r0, "inc/app", "v1", "first")
    b1 = cluster.root / "b1.tar"
    moorage("backup", "--existing", r0.url, "--out", str(b1), "--include-blobs")
    push_image(r0, "inc/app", "v2", "second")
    b2 = cluster.root / "b2.tar"
    inc = json.loads(
        moorage(
            "backup", "--existing", r0.url, "--out", str(b2), "--include-blobs",
            "--since", str(b1), "--json",
        ).stdout
    )  # fmt: skip
    assert inc["blobs_from_base"] == 2  # the config and the layer
    assert inc["manifests_from_base"] == 1
    assert json.loads(moorage("backup", "verify", str(b2), "--json").stdout)["ok"] is True
    # An incremental written over its own base, or over an archive of its chain, would
    # destroy what it builds on: refused, and both archives stay as they were.
    before = (b1.read_bytes(), b2.read_bytes())
    for out, since in ((b2, b2), (b1, b2)):
        says = refused(
            "backup", "--existing", r0.url, "--out", str(out), "--include-blobs",
            "--since", str(since),
        )  # fmt: skip
        assert "writing it would destroy them" in says
    assert (b1.read_bytes(), b2.read_bytes()) == before
    # b1 is replaced by a valid backup of the same name that lacks the layer blobs (taken
    # without --include-blobs): b2's header still says its base holds them.
    moorage("backup", "--existing", r0.url, "--out", str(b1))
    assert "OK" in moorage("backup", "verify", str(b1)).stdout
    verdict = refused("backup", "verify", str(b2))
    assert "the header says a base archive holds it" in verdict
    layer = sha256(b"layer of first" * 500)
    assert layer in verdict
    target = Node(cluster.root, "target")
    assert "corrupt" in refused(
        "restore", "--yes", "--in", str(b2), *target.flags(), "--storage", str(cluster.root / "s2")
    )
    assert not target.data_dir.exists()
    # A later incremental counts what the chain actually holds, not what headers claim.
    b3 = cluster.root / "b3.tar"
    doc = json.loads(
        moorage(
            "backup", "--existing", r0.url, "--out", str(b3), "--include-blobs",
            "--since", str(b1), "--json",
        ).stdout
    )  # fmt: skip
    assert doc["blobs_in_archive"] == 4  # both images' configs and layers
    assert json.loads(moorage("backup", "verify", str(b3), "--json").stdout)["ok"] is True
    assert first


def test_backup_while_manifests_and_blobs_are_deleted(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read one blob ahead at most, so that nearly every read comes after the deletes.
    monkeypatch.setattr(backup, "_READERS", 1)
    monkeypatch.setattr(backup, "_WINDOW", 1)
    r0 = cluster.install()
    images = {f"del/app{i}": push_image(r0, f"del/app{i}", "v1", f"del{i}") for i in range(6)}
    client = AdminClient([r0.url], "admin", ADMIN_PASSWORD)
    deleted: list[str] = []

    def delete_everything(done: int, total: int) -> None:
        """Runs after the first blob is stored: deletes every image the backup holds."""
        if deleted:
            return
        with r0.client() as c:
            for repo, body in images.items():
                doc = json.loads(body)
                assert c.delete(f"/v2/{repo}/manifests/{sha256(body)}").status_code == 202
                for desc in (doc["config"], *doc["layers"]):
                    assert c.delete(f"/v2/{repo}/blobs/{desc['digest']}").status_code == 202
                deleted.append(repo)

    archive = cluster.root / "during.tar"
    doc = backup.create(client, archive, True, None, progress=delete_everything)
    assert deleted == list(images)
    assert doc.source == "storage"
    assert doc.counts["manifests"] == 6
    with r0.client() as c:
        assert c.get("/v2/del/app0/manifests/v1").status_code == 404
    report = backup.verify(archive)
    assert report.ok is True, report.problems

    # Restore into new storage: the archive alone brings back everything as of its revision.
    moorage("stop", "--data-dir", str(r0.data_dir))
    fresh = Node(cluster.root, "fresh")
    out = json.loads(
        moorage(
            "restore", "--yes", "--in", str(archive), *fresh.flags(),
            "--storage", str(cluster.root / "s2"), "--json",
        ).stdout
    )  # fmt: skip
    cluster.nodes.append(fresh)
    assert out["missing_blobs"] == []
    assert out["problems"] == []
    for repo, body in images.items():
        assert pull_image(fresh, repo, "v1") == body


def test_backup_storage_flag_must_be_the_clusters_storage(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    r0 = cluster.install()
    body = push_image(r0, "flag/app", "v1", "flag")
    other = cluster.root / "other"
    other.mkdir()
    out = cluster.root / "x.tar"
    message = refused("backup", "--existing", r0.url, "--out", str(out), "--storage", str(other))
    assert "is not the cluster's blob storage" in message
    assert not out.exists()
    doc = json.loads(
        moorage(
            "backup", "--existing", r0.url, "--out", str(out), "--storage",
            str(cluster.storage), "--json",
        ).stdout
    )  # fmt: skip
    assert doc["source"] == "storage"
    with pytest.raises(MoorageError, match="not a plain file name"):
        backup.check_header(
            {**backup.read_header(out), "base": "../x", "base_chain": ["../x"]}, out
        )
    # A host that does not see blob storage reads the bytes through the API instead.
    monkeypatch.setattr(backup, "find_storage", lambda client, storage: None)
    client = AdminClient([r0.url], "admin", ADMIN_PASSWORD)
    via_http = backup.create(client, cluster.root / "http.tar", True, None)
    assert via_http.source == "http"
    assert via_http.blobs_in_archive == 2
    assert via_http.manifests_in_archive == 1
    report = backup.verify(cluster.root / "http.tar")
    assert report.ok is True, report.problems
    members = dict(read_members(cluster.root / "http.tar"))
    assert members[backup.blob_member(sha256(body))] == body


def test_format_1_archives_still_inspect_verify_and_restore(cluster: Cluster) -> None:
    archive = cluster.root / "old.tar"
    shutil.copy(FORMAT_1, archive)
    info = json.loads(moorage("backup", "inspect", str(archive), "--json").stdout)
    assert info["version"] == 1
    # blobs are layer and config blobs; manifests are counted apart (format 1 too).
    assert (info["manifests_in_archive"], info["blobs_in_archive"]) == (4, 7)
    assert info["counts"]["blobs"] == 7
    assert info["counts"]["manifests"] == 4
    assert "blobs:       7 in the archive" in moorage("backup", "inspect", str(archive)).stdout
    assert "OK" in moorage("backup", "verify", str(archive)).stdout
    node = Node(cluster.root, "old")
    doc = json.loads(
        moorage(
            "restore", "--yes", "--in", str(archive), *node.flags(),
            "--storage", str(cluster.root / "s"), "--no-replay-journal", "--json",
        ).stdout
    )  # fmt: skip
    cluster.nodes.append(node)
    assert doc["problems"] == []
    assert doc["missing_blobs"] == []
    assert doc["blobs_copied"] == 11
    # The admin user came back with the password it had when the fixture archive was written.
    with httpx.Client(base_url=node.url, auth=FORMAT_1_ADMIN, timeout=30) as c:
        assert c.get("/v2/old/app/tags/list").json()["tags"] == ["v1", "v2"]
        assert c.get("/v2/other/tags/list").json()["tags"] == ["latest"]
        v1 = c.get("/v2/old/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert v1.status_code == 200
        referrers = c.get(f"/v2/old/app/referrers/{sha256(v1.content)}").json()["manifests"]
        assert [r["artifactType"] for r in referrers] == ["application/x-sig"]
        config = json.loads(v1.content)["config"]["digest"]
        assert c.get(f"/v2/old/app/blobs/{config}").status_code == 200


def test_backup_and_inspect_count_blobs_alike(cluster: Cluster) -> None:
    """Issue 10, item 8: blobs (layers and configs) and manifests are counted apart, and
    `backup` and `backup inspect` print the same numbers."""
    r0 = cluster.install()
    push_image(r0, "count/app", "v1", "one")
    push_image(r0, "count/app", "v2", "two")
    first = cluster.root / "first.tar"
    made = json.loads(
        moorage(
            "backup", "--existing", r0.url, "--out", str(first), "--include-blobs", "--json"
        ).stdout
    )
    assert (made["manifests_in_archive"], made["blobs_in_archive"]) == (2, 4)
    info = json.loads(moorage("backup", "inspect", str(first), "--json").stdout)
    assert (info["manifests_in_archive"], info["blobs_in_archive"]) == (2, 4)
    assert (info["counts"]["manifests"], info["counts"]["blobs"]) == (2, 4)
    assert info["counts"] == made["counts"]
    push_image(r0, "count/app", "v3", "three")
    second = cluster.root / "second.tar"
    text = moorage(
        "backup", "--existing", r0.url, "--out", str(second), "--include-blobs",
        "--since", str(first),
    ).stdout  # fmt: skip
    assert "3 manifests, 2 blobs in the archive (4 in first.tar)" in text
    shown = moorage("backup", "inspect", str(second)).stdout
    assert "blobs:       2 in the archive, the rest in base first.tar" in shown
    assert "manifests 3" in shown


def test_records_that_contradict_the_bytes_are_refused(cluster: Cluster) -> None:
    """A record whose size, media type or subject is not what the bytes held say (a HEAD
    would then announce 1 byte of a 7,000-byte layer, or an index where GET sends an image
    manifest): `verify` refused none of these, and restore wrote them (probe 2026-12-03)."""
    r0 = cluster.install()
    body = push_image(r0, "contra/app", "v1", "contra")
    good = cluster.root / "contra.tar"
    moorage("backup", "--existing", r0.url, "--out", str(good), "--include-blobs")
    layer = sha256(b"layer of contra" * 500)

    def link_size(doc: dict) -> None:  # type: ignore[type-arg]
        for r in doc["records"]:
            if r["kind"] == "blob_link" and r["digest"] == layer:
                r["size"] = 1

    def tag_type(doc: dict) -> None:  # type: ignore[type-arg]
        for r in doc["records"]:
            if r["kind"] == "tag":
                r["media_type"], r["size"] = mt.OCI_INDEX, 5

    def manifest_size(doc: dict) -> None:  # type: ignore[type-arg]
        for r in doc["records"]:
            if r["kind"] == "manifest" and r["digest"] == sha256(body):
                r["size"] = 99999999

    for name, forge, needle in (
        ("link", link_size, "linked in contra/app as 1 bytes"),
        ("tag", tag_type, f"says its manifest is {mt.OCI_INDEX} of 5 bytes"),
        ("manifest", manifest_size, "is not what its"),
    ):
        forged = edit(good, cluster.root / f"contra-{name}.tar", edit_json("metadata.json", forge))
        assert needle in refused_everywhere(cluster, forged)
