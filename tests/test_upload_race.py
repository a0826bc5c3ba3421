"""Requests racing on one upload session: appending, finishing and cancelling exclude each
other on every replica, and a committed blob's bytes never change after its digest was
verified (issue 9, item 1).

A two-replica cluster (each replica its own process and etcd member) shares one blob storage
directory; a race is run on one replica and across the two.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
from harness.process import AUTH

from moorage.errors import BlobUploadUnknown, UploadBusy
from moorage.storage.filesystem import FilesystemStorage
from tests.cluster import Node, cluster_of
from tests.oci import sha256


@dataclass
class Pair:
    a: Node
    b: Node
    storage: Path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with cluster_of(2, tmp_path_factory.mktemp("race")) as c:
        yield Pair(c.nodes[0], c.nodes[1], c.storage)


class SlowRequest:
    """An HTTP request whose body is sent in two parts, under the test's control."""

    def __init__(self, replica: Node, method: str, path: str, length: int, **headers: str):
        self.sock = socket.create_connection(("127.0.0.1", replica.port), timeout=60)
        token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {replica.host}",
            f"Authorization: Basic {token}",
            "Content-Type: application/octet-stream",
            f"Content-Length: {length}",
            *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        resp = http.client.HTTPResponse(self.sock)
        resp.begin()
        body = resp.read()
        self.sock.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def _path(loc: str) -> str:
    return httpx.URL(loc).raw_path.decode()


def _with_digest(loc: str, digest: str) -> str:
    return f"{loc}{'&' if '?' in loc else '?'}digest={digest}"


def _blob_file(storage: Path, digest: str) -> Path:
    hex_ = digest.split(":")[1]
    return storage / "blobs" / "sha256" / hex_[:2] / hex_


def _assert_blob_intact(c: httpx.Client, storage: Path, repo: str, data: bytes) -> None:
    """Through the replica that linked the blob (each test replica has its own metadata
    store; only blob storage is shared), and in blob storage itself."""
    digest = sha256(data)
    head = c.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200
    got = c.get(f"/v2/{repo}/blobs/{digest}")
    assert got.status_code == 200
    assert sha256(got.content) == digest
    assert len(got.content) == int(head.headers["content-length"]) == len(data)
    path = _blob_file(storage, digest)
    assert path.read_bytes() == data
    # Defence in depth: a committed blob file is read-only.
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0


def _assert_oci_error(status: int, body: bytes, *allowed: int) -> None:
    assert status in allowed, (status, body)
    assert b'"errors"' in body, body
    assert b'"code"' in body, body


def _start_with_bytes(c: httpx.Client, repo: str, first: bytes) -> str:
    loc = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    resp = c.patch(
        loc,
        content=first,
        headers={
            "Content-Range": f"0-{len(first) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert resp.status_code == 202, resp.text
    return str(resp.headers["location"])


@pytest.mark.parametrize("across", [False, True], ids=["same-replica", "other-replica"])
def test_finish_while_a_patch_streams(pair: Pair, across: bool) -> None:
    """The reported race: PUT ?digest= for the first bytes while a second PATCH is still
    sending. Before the fix the PUT answered 201, the PATCH 202, and the blob file named by
    the digest held the PATCH's bytes too."""
    repo = f"race/finish-{int(across)}"
    first, second = os.urandom(1100), os.urandom(19)
    other = pair.b if across else pair.a
    with pair.a.client() as ca, other.client() as cb:
        loc = _start_with_bytes(ca, repo, first)
        slow = SlowRequest(
            pair.a, "PATCH", _path(loc), len(second), Content_Range=f"1100-{1100 + len(second) - 1}"
        )
        slow.send(second[:5])
        time.sleep(0.5)  # the PATCH handler runs and holds the upload
        put = cb.put(_with_digest(loc, sha256(first)))
        slow.send(second[5:])
        patch_status, _, patch_body = slow.response()

        if put.status_code == 201:  # the PUT came first: the PATCH must not be accepted
            _assert_oci_error(patch_status, patch_body, 404, 416)
            _assert_blob_intact(cb, pair.storage, repo, first)
        else:  # the PATCH held the upload: the PUT was refused, the upload goes on
            _assert_oci_error(put.status_code, put.content, 416)
            assert put.headers["range"] == "0-1099"
            assert patch_status == 202, patch_body
            assert not _blob_file(pair.storage, sha256(first)).exists()
            done = cb.put(_with_digest(loc, sha256(first + second)))
            assert done.status_code == 201, done.text
            _assert_blob_intact(cb, pair.storage, repo, first + second)


@pytest.mark.parametrize("across", [False, True], ids=["same-replica", "other-replica"])
def test_cancel_while_a_patch_streams(pair: Pair, across: bool) -> None:
    """A DELETE of the upload while a PATCH streams: the PATCH is not acknowledged into a
    cancelled upload, or the DELETE is refused while it runs."""
    repo = f"race/cancel-{int(across)}"
    first, second = os.urandom(1000), os.urandom(24)
    other = pair.b if across else pair.a
    with pair.a.client() as ca, other.client() as cb:
        loc = _start_with_bytes(ca, repo, first)
        slow = SlowRequest(
            pair.a, "PATCH", _path(loc), len(second), Content_Range=f"1000-{1000 + len(second) - 1}"
        )
        slow.send(second[:5])
        time.sleep(0.5)
        cancel = cb.delete(loc)
        slow.send(second[5:])
        patch_status, _, patch_body = slow.response()
        if cancel.status_code == 204:
            _assert_oci_error(patch_status, patch_body, 404, 416)
            assert ca.get(loc).status_code == 404
        else:
            _assert_oci_error(cancel.status_code, cancel.content, 416)
            assert patch_status == 202, patch_body
            status = ca.get(loc)
            assert status.status_code == 204
            assert status.headers["range"] == "0-1023"
            assert cb.delete(loc).status_code == 204
            assert ca.get(loc).status_code == 404


def test_patch_cut_off_mid_body_leaves_no_bytes(pair: Pair) -> None:
    """A PATCH whose client disconnects after several MiB (written by worker threads) is
    rolled back and lets go of the session; finishing it then commits the first bytes only."""
    repo = "race/cutoff"
    first = os.urandom(3000)
    with pair.a.client() as ca, pair.b.client() as cb:
        loc = _start_with_bytes(ca, repo, first)
        slow = SlowRequest(pair.a, "PATCH", _path(loc), 20 * 1024 * 1024)
        slow.send(os.urandom(9 * 1024 * 1024))
        time.sleep(0.5)
        slow.sock.close()
        put = cb.put(_with_digest(loc, sha256(first)))
        for _ in range(100):  # the PATCH may still be rolling back
            if put.status_code != 416:
                break
            time.sleep(0.1)
            put = cb.put(_with_digest(loc, sha256(first)))
        assert put.status_code == 201, put.text
        _assert_blob_intact(cb, pair.storage, repo, first)


def _big_upload(c: httpx.Client, repo: str, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    loc = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    resp = c.patch(loc, content=data, headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 202, resp.text
    return str(resp.headers["location"]), data


def _at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_finishing_twice_at_once(pair: Pair) -> None:
    """Two PUT ?digest= of one upload at the same time, on the two replicas: one 201, one
    clean 4xx (416 while the other holds the upload, 404 once it is finished). Before the fix
    both could hash the bytes and both answered 201."""
    repo = "race/twice"
    for _ in range(5):
        with pair.a.client() as ca, pair.b.client() as cb:
            loc, data = _big_upload(ca, repo, 24 * 1024 * 1024)
            url = _with_digest(loc, sha256(data))
            # Neither replica wrote the bytes here: both read them back to hash them.
            with pair.b.client() as cb2:
                results = _at_once(partial(cb.put, url), partial(cb2.put, url))
            codes = sorted(r.status_code for r in results)
            assert codes[0] == 201, [r.text for r in results]
            assert codes[1] in (404, 416), [r.text for r in results]
            loser = next(r for r in results if r.status_code != 201)
            _assert_oci_error(loser.status_code, loser.content, 404, 416)
            _assert_blob_intact(cb, pair.storage, repo, data)


def test_finish_against_cancel(pair: Pair) -> None:
    """PUT ?digest= on one replica and DELETE on the other at once: never both succeed."""
    repo = "race/finish-cancel"
    for _ in range(3):
        with pair.a.client() as ca, pair.b.client() as cb:
            loc, data = _big_upload(ca, repo, 24 * 1024 * 1024)
            put, delete = _at_once(
                partial(cb.put, _with_digest(loc, sha256(data))), partial(ca.delete, loc)
            )
            assert (put.status_code == 201) != (delete.status_code == 204), (put.text, delete.text)
            if put.status_code == 201:
                _assert_oci_error(delete.status_code, delete.content, 404, 416)
                _assert_blob_intact(cb, pair.storage, repo, data)
            else:
                _assert_oci_error(put.status_code, put.content, 404, 416)
                assert cb.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
                assert not _blob_file(pair.storage, sha256(data)).exists()
            assert ca.get(loc).status_code == 404


# -- the storage driver alone (real files, no HTTP) ---------------------------------------


def test_storage_lock_excludes_and_purge_skips_held_uploads(tmp_path: Path) -> None:
    async def run() -> None:
        storage = FilesystemStorage(tmp_path)
        await (await storage.create_upload("u1")).release()
        held = await storage.open_upload("u1")
        with pytest.raises(UploadBusy):
            await storage.open_upload("u1")
        old = time.time() - 3600
        os.utime(storage.layout.upload("u1"), (old, old))
        assert await storage.purge_stale(60, 60) == 0  # held: not purged under a writer
        assert storage.layout.upload("u1").exists()
        await held.release()
        assert await storage.purge_stale(60, 60) == 1
        with pytest.raises(BlobUploadUnknown):
            await storage.open_upload("u1")
        assert sorted(p.name for p in storage.layout.uploads.iterdir()) == []

    asyncio.run(run())


def test_storage_handle_of_a_finished_upload_is_refused(tmp_path: Path) -> None:
    """A request that opened the upload before another committed it sees it gone once it
    gets the lock, and writes nothing into the committed blob."""

    async def run() -> None:
        storage = FilesystemStorage(tmp_path)
        handle = await storage.create_upload("u2")
        writer = await handle.append(None)
        await writer.write(b"hello")
        await writer.close()
        digest = sha256(b"hello")
        await handle.commit(digest)
        await handle.release()
        with pytest.raises(BlobUploadUnknown):
            await storage.open_upload("u2")
        assert await storage.read_bytes(digest) == b"hello"
        assert sorted(p.name for p in storage.layout.uploads.iterdir()) == []

    asyncio.run(run())


def test_storage_purges_an_upload_whose_commit_was_cut_short(tmp_path: Path) -> None:
    """A crash between marking the data file ended (read-only) and renaming it: the
    session is gone for every request, and purging removes the file once it is stale."""

    async def run() -> None:
        storage = FilesystemStorage(tmp_path)
        await (await storage.create_upload("u3", repo="legacy/repo")).release()
        data = storage.layout.upload("u3")
        data.chmod(0o444)
        with pytest.raises(BlobUploadUnknown):
            await storage.open_upload("u3")
        assert await storage.purge_stale(60, 60) == 0  # not stale yet
        old = time.time() - 3600
        os.utime(data, (old, old))
        os.utime(storage.layout.upload_info("u3"), (old, old))
        assert await storage.purge_stale(60, 60) == 2
        assert sorted(p.name for p in storage.layout.uploads.iterdir()) == []

    asyncio.run(run())
