"""Hostile input to the HTTP API (issue 9, items 8-10 and 12): a request never acts on
another resource than the one it names, bad input answers a 4xx in the OCI envelope (never
a 500 or a traceback), and `/metrics` labels stay a bounded set."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from harness.replica import Replica

from moorage.errors import DigestInvalid, NameInvalid, StorageUnavailable
from moorage.oci.digest import parse_digest
from moorage.oci.names import is_valid_tag, validate_name
from moorage.storage.journal import Journal, read_entries
from tests import rawhttp
from tests.oci import unique_repo
from tests.rawhttp import RawResponse, assert_pulls_back, push_image

HUGE = "9" * 5000  # more digits than int() converts (4,300)


def assert_oci(resp: RawResponse, status: int, code: str) -> None:
    assert resp.status == status, (resp.status, resp.body[:300])
    assert (resp.header("content-type") or "").startswith("application/json")
    errors = resp.json()["errors"]
    assert errors[0]["code"] == code, errors
    assert isinstance(errors[0]["message"], str)


def send(registry: Replica, method: str, target: str, **kw: object) -> RawResponse:
    """One raw request; its answer (a test that resets the connection uses rawhttp)."""
    answer = rawhttp.request(registry.port, method.encode(), target.encode(), **kw)  # type: ignore[arg-type]
    assert answer is not None
    return answer


def test_identifiers_are_matched_whole() -> None:
    """`$` matches before a trailing newline: every grammar must use a full match."""
    digest = "sha256:" + "a" * 64
    assert is_valid_tag("nl")
    for bad in ("nl\n", "nl\r", "\nnl", "n\tl", "nl\x00"):
        assert not is_valid_tag(bad)
        with pytest.raises(NameInvalid):
            validate_name(bad)
    with pytest.raises(DigestInvalid):
        parse_digest(digest + "\n")
    assert str(parse_digest(digest)) == digest


def test_control_character_in_a_tag_does_not_act_on_another_tag(
    registry: Replica, client: httpx.Client
) -> None:
    repo = unique_repo("hostile")
    image = push_image(client, repo, "keep", b"keep this layer")
    for ref in ("kee%0Ap", "kee%09p", "keep%0A", "keep%0D", "keep%00", "%0Akeep", "kee%7Fp"):
        for method in ("DELETE", "GET", "HEAD"):
            r = send(registry, method, f"/v2/{repo}/manifests/{ref}")
            assert r.status == 404, (method, ref, r.status)
            if method != "HEAD":
                assert_oci(r, 404, "MANIFEST_UNKNOWN")
    assert_pulls_back(client, image)


def test_control_character_in_a_name_is_refused(registry: Replica, client: httpx.Client) -> None:
    repo = unique_repo("hostile")
    image = push_image(client, repo, "keep", b"a layer of a named repo")
    layer = next(d for d, data in image.blobs.items() if data.startswith(b"a layer"))
    first, rest = repo.split("/", 1)
    for name in (f"{first[:3]}%09{first[3:]}/{rest}", f"{repo}%0A", f"%0A{repo}", f"{repo}%0D"):
        assert_oci(send(registry, "GET", f"/v2/{name}/tags/list"), 400, "NAME_INVALID")
        assert_oci(send(registry, "DELETE", f"/v2/{name}/blobs/{layer}"), 400, "NAME_INVALID")
        target = f"/v2/{name}/manifests/{image.digest}"
        assert_oci(send(registry, "DELETE", target), 400, "NAME_INVALID")
    assert_pulls_back(client, image)


def test_newline_after_a_digest_is_refused(registry: Replica, client: httpx.Client) -> None:
    repo = unique_repo("hostile")
    image = push_image(client, repo, "keep", b"digest newline layer")
    layer = next(d for d, data in image.blobs.items() if data.startswith(b"digest"))
    for suffix in ("%0A", "%0D%0A", "%09"):
        for method in ("GET", "DELETE"):
            r = send(registry, method, f"/v2/{repo}/blobs/{layer}{suffix}")
            assert_oci(r, 400, "DIGEST_INVALID")
            r = send(registry, method, f"/v2/{repo}/manifests/{image.digest}{suffix}")
            assert_oci(r, 400, "DIGEST_INVALID")
        r = send(registry, "GET", f"/v2/{repo}/referrers/{image.digest}{suffix}")
        assert_oci(r, 400, "DIGEST_INVALID")
    assert_pulls_back(client, image)


def test_newline_after_an_upload_id_is_refused(registry: Replica, client: httpx.Client) -> None:
    repo = unique_repo("hostile")
    created = client.post(f"/v2/{repo}/blobs/uploads/")
    location = created.headers["location"]
    data = b"never appended"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    length = [(b"Content-Length", str(len(data)).encode())]
    for suffix in ("%0A", "%09", "%00"):
        bad = location + suffix
        r = send(registry, "PATCH", bad, headers=length, body=data)
        assert_oci(r, 404, "BLOB_UPLOAD_UNKNOWN")
        # A bad Content-Range is parsed before the upload is looked up: still a 404, and
        # no header built from the id.
        headers = [*length, (b"Content-Range", b"5-1")]
        r = send(registry, "PATCH", bad, headers=headers, body=data)
        assert_oci(r, 404, "BLOB_UPLOAD_UNKNOWN")
        assert r.header("location") is None
        r = send(registry, "PUT", f"{bad}?digest={digest}", headers=length, body=data)
        assert_oci(r, 404, "BLOB_UPLOAD_UNKNOWN")
        assert_oci(send(registry, "DELETE", bad), 404, "BLOB_UPLOAD_UNKNOWN")
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == "0-0"  # nothing was appended, the upload lives on


def test_tag_with_a_trailing_newline_is_refused(registry: Replica, client: httpx.Client) -> None:
    repo = unique_repo("hostile")
    image = push_image(client, repo, "base", b"tag newline layer")
    headers = [(b"Content-Type", b"application/vnd.oci.image.manifest.v1+json")]
    headers.append((b"Content-Length", str(len(image.manifest)).encode()))
    for tag in ("nl%0A", "nl%0D", "%0Anl", "n%09l"):
        target = f"/v2/{repo}/manifests/{image.digest}?tag={tag}"
        r = send(registry, "PUT", target, headers=headers, body=image.manifest)
        assert_oci(r, 400, "MANIFEST_INVALID")
        r = send(
            registry, "PUT", f"/v2/{repo}/manifests/{tag}", headers=headers, body=image.manifest
        )
        assert_oci(r, 400, "MANIFEST_INVALID")
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["base"]
    assert_pulls_back(client, image)


def test_other_endpoints_refuse_control_characters(registry: Replica) -> None:
    for target in ("/metrics%0A", "/_ping%0A", "/api/v0/health%0A", "/api/v0/cluster/status%0A"):
        r = send(registry, "GET", target)
        assert r.status == 404, (target, r.status)
    assert send(registry, "GET", "/v2/_catalog%0A").status == 404


def test_numbers_too_long_or_not_ascii_are_4xx(registry: Replica, client: httpx.Client) -> None:
    repo = unique_repo("hostile")
    image = push_image(client, repo, "keep", b"0123456789" * 10)
    layer = next(d for d, data in image.blobs.items() if data.startswith(b"0123"))
    for target in (f"/v2/_catalog?n={HUGE}", f"/v2/{repo}/tags/list?n={HUGE}"):
        assert send(registry, "GET", target).status == 200
    for n in ("%C2%B2", "%D9%A3", "1%0A", "-1", "1e3", "0x10"):
        for target in (f"/v2/_catalog?n={n}", f"/v2/{repo}/tags/list?n={n}"):
            assert_oci(send(registry, "GET", target), 400, "PAGINATION_NUMBER_INVALID")

    blob = f"/v2/{repo}/blobs/{layer}"
    for whole in (f"bytes=0-{HUGE}", f"bytes=-{HUGE}", f"bytes={'0' * 5000}-{HUGE}"):
        r = send(registry, "GET", blob, headers=[(b"Range", whole.encode())])
        assert r.status == 206
        assert r.body == b"0123456789" * 10
    r = send(registry, "GET", blob, headers=[(b"Range", f"bytes={HUGE}-".encode())])
    assert_oci(r, 416, "RANGE_INVALID")
    for odd in (b"bytes=\xb2-", b"bytes=0-\xc2\xb2", b"bytes=\xd9\xa3-"):
        r = send(registry, "GET", blob, headers=[(b"Range", odd)])
        assert r.status == 200
        assert r.body == b"0123456789" * 10

    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    for content_range in (f"{HUGE}-{HUGE}".encode(), f"0-{HUGE}".encode(), b"0-\xb2", b"\xb2-3"):
        headers = [(b"Content-Range", content_range), (b"Content-Length", b"4")]
        r = send(registry, "PATCH", location, headers=headers, body=b"abcd")
        assert 400 <= r.status < 500, (content_range, r.status)
        assert r.json()["errors"][0]["code"] in ("BLOB_UPLOAD_INVALID", "SIZE_INVALID")
    for length in (HUGE.encode(), b"\xb2", b"\xd9\xa3", b"-1"):
        r = send(registry, "PATCH", location, headers=[(b"Content-Length", length)], body=b"ab")
        assert 400 <= r.status < 500, (length, r.status)
    assert client.get(location).headers["range"] == "0-0"


def test_non_ascii_authorization_is_unauthorized(registry: Replica) -> None:
    for value in (b"Basic \xe9\xe9", b"Basic " + "é:é".encode(), b"\xff"):
        r = send(registry, "GET", "/v2/", auth=False, headers=[(b"Authorization", value)])
        assert_oci(r, 401, "UNAUTHORIZED")
        r = send(
            registry,
            "GET",
            "/api/v0/cluster/status",
            auth=False,
            headers=[(b"Authorization", value)],
        )
        assert r.status == 401


def test_admin_api_refuses_nested_huge_and_cut_short_json(registry: Replica) -> None:
    def post(path: str, body: bytes, **kw: object) -> RawResponse:
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
        return send(registry, "POST", path, headers=headers, body=body, **kw)

    for body in (
        b"[" * 20000 + b"]" * 20000,
        b'{"a":' * 10000 + b"1" + b"}" * 10000,
        b"[" * 60000,
    ):
        r = post("/api/v0/cluster/join", body)
        assert r.status == 400, r
        assert r.json()["code"] == "INVALID"
    r = post("/api/v0/cluster/join", b'{"x":"' + b"a" * 100_000 + b'"}')
    assert r.status == 413
    r = post("/api/v0/cluster/join/promote", json.dumps({"member_id": HUGE}).encode())
    assert r.status == 400
    r = post("/api/v0/cluster/join", json.dumps({"replica_id": HUGE}).encode())
    assert r.status == 400
    headers = [(b"Content-Length", b"1000")]
    target = "/api/v0/cluster/join"
    r = send(registry, "POST", target, headers=headers, body=b"{", half_close=True)
    assert r.status == 400


def _requests_with_status(registry: Replica, status: str) -> float:
    text = httpx.get(f"{registry.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("moorage_http_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_body_cut_short_is_a_400_without_traceback(
    registry: Replica, client: httpx.Client
) -> None:
    log_start = registry.log.stat().st_size
    errors_before = _requests_with_status(registry, "500")
    repo = unique_repo("hostile")
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    declared = [(b"Content-Length", b"100000")]

    r = send(registry, "PATCH", location, headers=declared, body=b"x" * 5000, half_close=True)
    assert_oci(r, 400, "BLOB_UPLOAD_INVALID")
    chunked = [(b"Transfer-Encoding", b"chunked")]
    for broken in (b"10\r\nabc\r\nzz\r\n", b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc"):
        r = send(registry, "PATCH", location, headers=chunked, body=broken, half_close=True)
        assert_oci(r, 400, "BLOB_UPLOAD_INVALID")
    # A client that vanishes (RST) mid-body: nobody reads the answer, the metrics show 400.
    rawhttp.request(registry.port, b"PATCH", location.encode(), declared, b"x" * 5000, reset=True)
    digest = "sha256:" + "0" * 64
    target = f"/v2/{repo}/blobs/uploads/?digest={digest}"
    r = send(registry, "POST", target, headers=declared, body=b"y" * 100, half_close=True)
    assert_oci(r, 400, "BLOB_UPLOAD_INVALID")
    manifest = [(b"Content-Length", b"1000"), (b"Content-Type", b"application/json")]
    target = f"/v2/{repo}/manifests/cut"
    r = send(registry, "PUT", target, headers=manifest, body=b'{"schemaVersion"', half_close=True)
    assert_oci(r, 400, "MANIFEST_INVALID")

    assert client.get(location).headers["range"] == "0-0"  # nothing of it was kept
    assert _requests_with_status(registry, "500") == errors_before
    with open(registry.log, "rb") as fh:
        fh.seek(log_start)
        assert b"Traceback" not in fh.read()


def test_metrics_labels_stay_bounded(registry: Replica) -> None:
    def series() -> set[str]:
        text = httpx.get(f"{registry.url}/metrics").text
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("moorage_")}

    for i in range(3):  # every route class and odd status is seen once
        for method in (f"FOO{i}", f"B{i}R"):
            for path in (f"/x{i}", f"/v2/a{i}/manifests/t", f"/api/v0/z{i}", f"/v2/_catalog{i}"):
                send(registry, method, path)
    before = series()
    for i in range(3, 40):
        for method in (f"FOO{i}", f"B{i}R", "get", "M-SEARCH"):
            for path in (f"/x{i}", f"/v2/a{i}/manifests/t", f"/api/v0/z{i}", f"/v2/_catalog{i}"):
                send(registry, method, path)
    after = series()
    assert after == before, sorted(after - before)[:10]
    methods = {m for s in after for m in re.findall(r'method="([^"]*)"', s)}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods


def test_journal_io_error_is_503_with_the_reason(tmp_path: Path) -> None:
    """A journal that cannot be written: 503 UNAVAILABLE saying why; a push works again once
    blob storage is writable (here only the manifest change writes the journal)."""
    replica = Replica(tmp_path / "data", storage=tmp_path / "blobs")
    replica.start()
    try:
        journal = tmp_path / "blobs" / "journal"
        shutil.rmtree(journal, ignore_errors=True)
        journal.write_text("not a directory")  # mkdir and open fail: an I/O error
        with replica.client() as c:
            repo = unique_repo("hostile")
            r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": _d(b"{}")}, content=b"{}")
            assert r.status_code == 201
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "x/y", "digest": _d(b"{}"), "size": 2},
                    "layers": [],
                }
            ).encode()
            put = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
            r = c.put(f"/v2/{repo}/manifests/t", content=manifest, headers=put)
            assert r.status_code == 503, r.text
            error = r.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert "journal" in error["message"]
            assert "Traceback" not in replica.log.read_text()
            journal.unlink()
            r = c.put(f"/v2/{repo}/manifests/t", content=manifest, headers=put)
            assert r.status_code == 201, r.text
            assert c.get(f"/v2/{repo}/manifests/t").content == manifest
        assert [e["op"] for e in read_entries(tmp_path / "blobs")] == ["manifest"]
    finally:
        replica.stop()


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_journal_recovers_after_a_failed_write(tmp_path: Path) -> None:
    async def run() -> None:
        journal = Journal(tmp_path, "w", 1, "c")
        (tmp_path / "journal").write_text("in the way")
        with pytest.raises(StorageUnavailable, match="cannot write the journal"):
            await journal.append({"r": 1, "op": "untag"})
        (tmp_path / "journal").unlink()
        await journal.append({"r": 2, "op": "untag"})
        with open(journal.path, "ab") as fh:  # a write that failed halfway through a line
            fh.write(b'{"c":"c","e":1,"r":')
        journal._torn = True
        await journal.append({"r": 3, "op": "untag"})
        journal.close()

    asyncio.run(run())
    assert [e["r"] for e in read_entries(tmp_path)] == [2, 3]


def test_base_endpoint_answers_only_get_and_head(registry: Replica) -> None:
    """A 200 to CONNECT opens a tunnel: the server then sent nothing at all (fuzz find)."""
    for method in ("CONNECT", "POST", "DELETE", "FOO"):
        for path in ("/v2/", "/v2"):
            assert_oci(send(registry, method, path), 405, "UNSUPPORTED")
    assert send(registry, "GET", "/v2/").body == b"{}"
    assert send(registry, "HEAD", "/v2/").status == 200


def test_promote_of_an_unknown_member_is_a_prompt_404(registry: Replica) -> None:
    """etcd's 'member not found' was retried for two minutes, then a 503 (fuzz find)."""
    with registry.client(timeout=30) as c:
        for member_id in ("abc", "0", "ffffffffffffffff"):
            r = c.post("/api/v0/cluster/join/promote", json={"member_id": member_id})
            assert r.status_code == 404, r.text
            assert r.json()["code"] == "NOT_FOUND"
        for member_id in ("xyz", "1" * 30, "", "-1", "12\n"):
            r = c.post("/api/v0/cluster/join/promote", json={"member_id": member_id})
            assert r.status_code == 400, r.text


def test_admin_api_answers_lone_surrogates(registry: Replica) -> None:
    """A JSON string escape with no UTF-8 form, echoed in the refusal (fuzz find: a 500)."""
    body = b'{"replica_ids": ["\\ud800"]}'
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
    r = send(registry, "POST", "/api/v0/cluster/remove", headers=headers, body=body)
    assert r.status == 409
    assert r.json()["code"] == "REFUSED"
    assert "\ud800" in r.json()["error"]


def test_a_descriptor_size_unlike_its_blob_is_refused(client: httpx.Client) -> None:
    """A manifest whose layer or config size is not the stored blob's is a 400
    MANIFEST_INVALID naming the blob, and no tag moves to it (a pull would fail on it)."""
    repo = unique_repo()
    blobs = {}
    for data in (b'{"architecture":"amd64","os":"linux"}', b"layer!"):
        digest = _d(data)
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
        assert r.status_code == 201, r.text
        blobs[data] = digest
    config, layer = list(blobs.items())

    def manifest(config_size: int, layer_size: int) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config[1],
                    "size": config_size,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer[1],
                        "size": layer_size,
                    }
                ],
            }
        ).encode()

    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    for sizes in ((len(config[0]), 999_999), (len(config[0]) + 1, len(layer[0]))):
        r = client.put(f"/v2/{repo}/manifests/v1", content=manifest(*sizes), headers=headers)
        assert r.status_code == 400, r.text
        err = r.json()["errors"][0]
        assert err["code"] == "MANIFEST_INVALID"
        assert "fix the descriptor's size" in err["message"]
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404
    good = manifest(len(config[0]), len(layer[0]))
    assert client.put(f"/v2/{repo}/manifests/v1", content=good, headers=headers).status_code == 201


def test_silent_connections_do_not_shut_the_replica_out(registry: Replica) -> None:
    """granian counts open connections against its bound (server/transport.py BACKPRESSURE),
    not requests: at the old bound of 64, a probe's 64 sockets that sent nothing left the
    replica answering nothing, `/_ping` included, for as long as they stayed open."""
    import socket

    silent = [socket.create_connection(("127.0.0.1", registry.port)) for _ in range(150)]
    try:
        with httpx.Client(base_url=registry.url, timeout=10, verify=registry.verify()) as fresh:
            assert fresh.get("/_ping").status_code == 200
            assert fresh.get("/v2/").status_code == 401  # answered, credentials asked
    finally:
        for sock in silent:
            sock.close()
    assert registry.proc is not None
    limits = Path(f"/proc/{registry.proc.pid}/limits").read_text()
    fields = next(line for line in limits.splitlines() if "open files" in line).split()
    soft, hard = int(fields[3]), fields[4]
    # raised at start (transport.raise_open_files), up to the hard limit
    assert soft >= (4096 if hard == "unlimited" else min(4096, int(hard)))


def test_an_error_answered_before_a_large_body_reaches_the_client(registry: Replica) -> None:
    """A PATCH of 8 MB to an upload another request holds (416), then to the cancelled upload
    (404): each answer comes before the body is read. The server used to close the
    connection on the client still sending, which then got a reset (httpx: ReadError) instead
    of the answer; now the body is read and dropped first."""
    from harness.process import AUTH

    body = os.urandom(8 * 1024 * 1024)

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000
            await asyncio.sleep(0.1)

    async def run() -> list[tuple[int, str]]:
        def new() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=registry.url, auth=AUTH, timeout=60, verify=registry.verify()
            )

        found = []
        async with new() as holder, new() as other:
            started = await holder.post(f"/v2/{unique_repo()}/blobs/uploads/")
            location = started.headers["Location"]
            held = asyncio.create_task(holder.patch(location, content=slow()))
            await asyncio.sleep(0.5)
            busy = await other.patch(
                location, content=body, headers={"Content-Type": "application/octet-stream"}
            )
            found.append((busy.status_code, busy.json()["errors"][0]["code"]))
            await held
            assert (await holder.delete(location)).status_code == 204
            gone = await other.patch(location, content=body)
            found.append((gone.status_code, gone.json()["errors"][0]["code"]))
            found.append(((await other.get("/v2/")).status_code, ""))
        return found

    assert asyncio.run(run()) == [
        (416, "BLOB_UPLOAD_INVALID"),
        (404, "BLOB_UPLOAD_UNKNOWN"),
        (200, ""),
    ]
