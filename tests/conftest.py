"""Fixtures that run real Moorage replicas (each with its own etcd) on 127.0.0.1.

Every process is started by the test and stopped by pid; data lives under pytest's tmp dirs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ADMIN_PASSWORD = "test-admin-password"
AUTH = ("admin", ADMIN_PASSWORD)


# -- test tiers (markers registered in pyproject.toml; `make test-fast` runs `-m unit`) ----------
# A test's tier comes from its file: tests/unit/ is `unit`, a file listed here has the tier
# given, any other file `replica`. A file that mixes tiers is listed under its heaviest.
TIERS = {
    "test_clients.py": "clients",
    "test_partition.py": "netns",
    "test_partition_fence.py": "netns",
    "test_chaos.py": "chaos",
    "test_backup_hardening.py": "cluster",
    "test_cluster.py": "cluster",
    "test_forged_records.py": "cluster",
    "test_multi_survivor.py": "cluster",
    "test_recovery.py": "cluster",
    "test_scale_limits.py": "cluster",
}
#: Fixtures that start processes: a unit test that asks for one is an error.
PROCESS_FIXTURES = frozenset({"registry", "client", "fresh_replica"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unit_dir = Path(__file__).parent / "unit"
    for item in items:
        path = Path(str(item.path))
        if unit_dir in path.parents:
            tier = "unit"
            wanted = PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            if wanted:
                raise pytest.UsageError(
                    f"{item.nodeid}: a unit test may not use {', '.join(sorted(wanted))} "
                    "(they start processes); move it out of tests/unit/"
                )
        else:
            tier = TIERS.get(path.name, "replica")
        item.add_marker(getattr(pytest.mark, tier))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moorage_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "moorage", *args]


class Replica:
    """A `moorage run` process started by a test."""

    def __init__(self, data_dir: Path, storage: Path | None = None, workers: int = 1) -> None:
        self.data_dir = data_dir.resolve()
        self.storage = storage
        self.workers = workers
        self.port = free_port()
        self.etcd_client_port = free_port()
        self.etcd_peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        args = ["run", "--data-dir", str(self.data_dir), "--workers", str(self.workers)]
        if not (self.data_dir / "moorage.json").exists():
            args += ["--http-addr", self.host]
            args += ["--etcd-client-port", str(self.etcd_client_port)]
            args += ["--etcd-peer-port", str(self.etcd_peer_port)]
            if self.storage is not None:
                args += ["--storage", str(self.storage)]
        env = dict(os.environ, MOORAGE_ADMIN_PASSWORD=ADMIN_PASSWORD)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                moorage_cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=env
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"moorage exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/_ping", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"moorage not healthy in {timeout} s: {self.log.read_text()[-3000:]}")

    def pids(self) -> dict[str, int]:
        out = {}
        for f in (self.data_dir / "run").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                out[f.stem] = int(f.read_text())
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL every process of the replica (supervisor, API workers, etcd)."""
        # The supervisor first: killed after a worker, it could fork a replacement that the
        # pid files read here do not list yet.
        pids = self.pids()
        for pid in sorted(pids.values(), key=lambda p: p != pids.get("moorage")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        self.proc = None
        time.sleep(0.2)

    def client(
        self, auth: tuple[str, str] | None = AUTH, timeout: float = 60, **kw: object
    ) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=timeout, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica shared by the tests that do not restart or kill it."""
    r = Replica(tmp_path_factory.mktemp("shared") / "data")
    r.start()
    yield r
    r.stop()


@pytest.fixture
def client(registry: Replica) -> Iterator[httpx.Client]:
    with registry.client() as c:
        yield c


@pytest.fixture
def fresh_replica(tmp_path: Path) -> Iterator[Replica]:
    """A replica of the test's own, for tests that restart or kill it."""
    r = Replica(tmp_path / "data")
    yield r
    r.kill() if r.proc is not None and r.proc.poll() is None else r.stop()
    for pid in r.pids().values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- helpers for the OCI conformance tests (tests/test_conformance_*.py) ----------------------
# A port of the request helpers and test data of opencontainers/distribution-spec/conformance.

MT_OCTET = "application/octet-stream"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_IMAGE = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_PREFIX = "application/vnd.oci.image.layer.v1."
MT_OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MT_OCI_LAYER_ND_GZ = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MT_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
MT_EXAMPLE1 = "application/vnd.example.oci.conformance.v1"
MT_EXAMPLE2 = "application/vnd.example.oci.conformance.v2"
CHUNK_MIN = 1024
# The error codes of the distribution spec (setup.go's errorCodes).
OCI_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "MANIFEST_UNVERIFIED",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "TAG_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
    }
)


def oci_digest(data: bytes, algo: str = "sha256") -> str:
    import hashlib

    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def unique_repo(prefix: str = "conformance") -> str:
    import uuid

    return f"{prefix}/{uuid.uuid4().hex[:16]}"


def rand_text() -> str:
    """Like Go's crypto/rand.Text(): 26 random base32 characters."""
    import base64
    import secrets

    return base64.b32encode(secrets.token_bytes(20)).decode()[:26]


def assert_oci_error(resp: httpx.Response, status: int, code: str) -> None:
    """Status, the spec's JSON envelope and its first code."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert isinstance(doc, dict)
    assert isinstance(doc["errors"], list)
    assert doc["errors"], doc
    for err in doc["errors"]:
        assert isinstance(err["code"], str)
        assert isinstance(err["message"], str)
        assert "detail" in err
    assert doc["errors"][0]["code"] == code, doc


def verify_digest_header(resp: httpx.Response, digest: str) -> None:
    """api.VerifyDigest with RequireDigestHeader (the 1.1+dev configuration)."""
    assert resp.headers.get("docker-content-digest") == digest, dict(resp.headers)


def verify_blob_location(c: httpx.Client, loc: str, body: bytes) -> None:
    """api.BlobVerifyLocation: the returned Location serves the blob."""
    assert loc, "location header missing"
    r = c.get(loc)
    assert r.status_code == 200, r.text[:300]
    assert r.content == body


def _upload_url(loc: str, **params: str) -> httpx.URL:
    return httpx.URL(loc).copy_merge_params(params)


def blob_post_put(
    c: httpx.Client, repo: str, digest: str, body: bytes, expect_bad: bool = False
) -> None:
    """api.BlobPostPut: POST a session, PUT the whole blob with ?digest=."""
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    loc = r.headers.get("location", "")
    assert loc, "blob post did not return a location"
    r = c.put(
        _upload_url(loc, digest=digest),
        content=body,
        headers={"Content-Type": MT_OCTET, "Content-Length": str(len(body))},
    )
    if expect_bad:
        assert r.status_code == 400, r.text
        return
    assert r.status_code == 201, r.text
    verify_digest_header(r, digest)
    verify_blob_location(c, r.headers.get("location", ""), body)


def blob_post_only(
    c: httpx.Client, repo: str, digest: str, body: bytes, expect_bad: bool = False
) -> None:
    """api.BlobPostOnly: one POST with ?digest= and the body (201, not the 202 fallback)."""
    r = c.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": digest},
        content=body,
        headers={"Content-Type": MT_OCTET, "Content-Length": str(len(body))},
    )
    if expect_bad:
        assert r.status_code == 400, r.text
        return
    assert r.status_code == 201, r.text
    assert r.headers.get("location")
    verify_digest_header(r, digest)
    verify_blob_location(c, r.headers["location"], body)


def blob_patch_stream(
    c: httpx.Client, repo: str, digest: str, body: bytes, expect_bad: bool = False
) -> None:
    """api.BlobPatchStream: POST, one PATCH without Content-Range, PUT with ?digest=."""
    r = c.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202, r.text
    loc = r.headers.get("location", "")
    assert loc
    r = c.patch(loc, content=body, headers={"Content-Type": MT_OCTET})
    assert r.status_code == 202, r.text
    loc = r.headers.get("location", "")
    assert loc, "blob patch did not return a location"
    r = c.put(
        _upload_url(loc, digest=digest),
        headers={"Content-Type": MT_OCTET, "Content-Length": "0"},
    )
    if expect_bad:
        assert r.status_code == 400, r.text
        return
    assert r.status_code == 201, r.text
    assert r.headers.get("location")
    verify_digest_header(r, digest)
    verify_blob_location(c, r.headers["location"], body)


def blob_patch_chunked(
    c: httpx.Client,
    repo: str,
    digest: str,
    body: bytes,
    put_last_chunk: bool = False,
    out_of_order: bool = False,
    expect_bad: bool = False,
) -> str:
    """api.BlobPatchChunked, flags included; returns the POST's OCI-Chunk-Min-Length."""
    r = c.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.status_code == 202, r.text
    min_str = r.headers.get("oci-chunk-min-length", "")
    loc = r.headers.get("location", "")
    chunk_size = len(body) // 3 + 1
    if min_str:
        chunk_size = max(chunk_size, int(min_str))
    chunk_size = max(chunk_size, CHUNK_MIN)
    chunk_size = min(chunk_size, len(body))
    last_byte = -1
    url = httpx.URL(loc)
    final: httpx.Response | None = None
    while last_byte < len(body) - 1:
        if out_of_order:
            assert loc, "blob request did not return a location"
            url = httpx.URL(loc)
            bad_start = last_byte + 1 + chunk_size
            if bad_start >= len(body):
                bad_start = 0
            bad_last = min(bad_start + chunk_size - 1, len(body) - 1)
            method = "PATCH"
            if put_last_chunk and bad_last == len(body) - 1:
                method = "PUT"
                url = url.copy_merge_params({"digest": digest})
            r = c.request(
                method,
                url,
                content=body[bad_start : bad_last + 1],
                headers={
                    "Content-Type": MT_OCTET,
                    "Content-Range": f"{bad_start}-{bad_last}",
                    "Content-Length": str(bad_last - bad_start + 1),
                },
            )
            assert r.status_code == 416, (method, r.status_code, r.text)
            loc = r.headers.get("location") or loc
            # recover with a GET to find the upload's location and range
            r = c.get(url)
            assert r.status_code == 204, r.text
            loc = r.headers.get("location") or loc
            rng = r.headers.get("range", "")
            assert rng.startswith("0-"), rng
            if last_byte >= 0:
                assert int(rng[2:]) == last_byte, (rng, last_byte)
        assert loc, "blob request did not return a location"
        url = httpx.URL(loc)
        start = last_byte + 1
        last_byte = min(start + chunk_size - 1, len(body) - 1)
        headers = {
            "Content-Type": MT_OCTET,
            "Content-Range": f"{start}-{last_byte}",
            "Content-Length": str(last_byte - start + 1),
        }
        chunk = body[start : last_byte + 1]
        if put_last_chunk and last_byte == len(body) - 1:
            url = url.copy_merge_params({"digest": digest})
            r = c.put(url, content=chunk, headers=headers)
            if expect_bad:
                assert r.status_code == 400, r.text
                return min_str
            assert r.status_code == 201, r.text
            loc = r.headers.get("location") or loc
            final = r
        else:
            r = c.patch(url, content=chunk, headers=headers)
            assert r.status_code == 202, r.text
            loc = r.headers.get("location") or loc
    if not put_last_chunk:
        assert loc, "blob patch did not return a location"
        url = httpx.URL(loc).copy_merge_params({"digest": digest})
        r = c.put(url, headers={"Content-Type": MT_OCTET, "Content-Length": "0"})
        if expect_bad:
            assert r.status_code == 400, r.text
            return min_str
        assert r.status_code == 201, r.text
        loc = r.headers.get("location") or loc
        final = r
    assert final is not None
    verify_digest_header(final, digest)
    verify_blob_location(c, loc, body)
    return min_str


BLOB_PUSHERS = (blob_post_put, blob_post_only, blob_patch_stream, blob_patch_chunked)


def blob_head_exists(c: httpx.Client, repo: str, digest: str, body: bytes) -> None:
    """api.BlobHeadExists: 200, empty body, Content-Length, Docker-Content-Digest."""
    r = c.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.status_code
    assert r.content == b""
    assert r.headers["content-length"] == str(len(body))
    verify_digest_header(r, digest)


def blob_get_exists(c: httpx.Client, repo: str, digest: str, body: bytes) -> None:
    """api.BlobGetExistsFull: 200, the bytes, Content-Length, Docker-Content-Digest."""
    r = c.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.status_code
    assert r.content == body
    assert r.headers["content-length"] == str(len(body))
    verify_digest_header(r, digest)


def blob_delete_atomic(c: httpx.Client, repo: str, digest: str) -> None:
    """TestDeleteBlob: DELETE answers 202, then HEAD answers 404 at once."""
    r = c.delete(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 202, r.text
    assert c.head(f"/v2/{repo}/blobs/{digest}").status_code == 404


def detect_media_type(body: bytes) -> str:
    """api.go detectMediaType: the body's mediaType, defaulting to the OCI image manifest."""
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        return MT_OCI_IMAGE
    mt = doc.get("mediaType") if isinstance(doc, dict) else None
    return mt if isinstance(mt, str) else MT_OCI_IMAGE


def detect_subject(body: bytes) -> str | None:
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        return None
    subject = doc.get("subject") if isinstance(doc, dict) else None
    return subject["digest"] if isinstance(subject, dict) else None


# api.go sends the two media types as two Accept headers
ACCEPT_MANIFESTS = [("Accept", MT_OCI_INDEX), ("Accept", MT_OCI_IMAGE)]


def manifest_put(
    c: httpx.Client,
    repo: str,
    ref: str,
    digest: str,
    body: bytes,
    tags: list[str] | tuple[str, ...] = (),
    expect_bad: bool = False,
) -> httpx.Response:
    """api.ManifestPut with referrers, digest header and `?tag=` checks on."""
    mt = detect_media_type(body)
    params = [("tag", t) for t in tags]
    r = c.put(
        f"/v2/{repo}/manifests/{ref}",
        params=params,
        content=body,
        headers={"Content-Type": mt},
    )
    if expect_bad:
        assert r.status_code == 400, r.text
        return r
    assert r.status_code == 201, r.text
    subject = detect_subject(body)
    if subject is not None:
        assert r.headers.get("oci-subject") == subject
    verify_digest_header(r, digest)
    loc = r.headers.get("location", "")
    assert loc, "manifest put did not return a location"
    g = c.get(loc, headers=ACCEPT_MANIFESTS)
    assert g.status_code == 200
    assert g.headers["content-type"] == mt
    assert g.headers["content-length"] == str(len(body))
    assert g.content == body
    for tag in tags:
        values = [v.strip() for h in r.headers.get_list("oci-tag") for v in h.split(",")]
        assert tag in values, f"header missing OCI-Tag: {tag}"
    return r


def manifest_get_exists(c: httpx.Client, repo: str, ref: str, digest: str, body: bytes) -> None:
    """api.ManifestGetExists: status, bytes, Content-Type, Content-Length, digest header."""
    r = c.get(
        f"/v2/{repo}/manifests/{ref}",
        headers=ACCEPT_MANIFESTS,
    )
    assert r.status_code == 200, r.text[:300]
    assert r.content == body
    assert r.headers["content-type"] == detect_media_type(body)
    assert r.headers["content-length"] == str(len(body))
    verify_digest_header(r, digest)


def manifest_head_exists(c: httpx.Client, repo: str, ref: str, digest: str, body: bytes) -> None:
    """api.ManifestHeadExists: 200, no body, Content-Type, Content-Length, digest header."""
    r = c.head(
        f"/v2/{repo}/manifests/{ref}",
        headers=ACCEPT_MANIFESTS,
    )
    assert r.status_code == 200, r.status_code
    assert r.content == b""
    assert r.headers["content-type"] == detect_media_type(body)
    assert r.headers["content-length"] == str(len(body))
    verify_digest_header(r, digest)


class Dataset:
    """testdata.go's testData: blobs, manifests (in push order), tags and expected referrers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tags: dict[str, str] = {}
        self.tag_pushed: set[str] = set()
        self.desc: dict[str, dict[str, object]] = {}
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.man_order: list[str] = []
        self.referrers: dict[str, list[dict[str, object]]] = {}
        self.tag_param: set[str] = set()  # manifests pushed by digest with ?tag=
        self.bad_digest: set[str] = set()  # manifests whose bytes do not match the digest

    # -- generators (genBlob, genLayer, genConfig, genManifest, genIndex and their *Full) --
    @staticmethod
    def _json(doc: object, extra_field: bool) -> bytes:
        import json

        if extra_field and isinstance(doc, dict):
            doc = {**doc, f"org.{rand_text()}": rand_text()}
        return json.dumps(doc, separators=(",", ":")).encode()

    def _describe(self, mt: str, data: bytes, algo: str, set_data: bool) -> str:
        import base64

        dig = oci_digest(data, algo)
        d: dict[str, object] = {"mediaType": mt, "digest": dig, "size": len(data)}
        if set_data:
            d["data"] = base64.b64encode(data).decode()
        self.desc[dig] = d
        return dig

    def add_blob(self, data: bytes, mt: str = MT_OCTET, algo: str = "sha256", **kw: object) -> str:
        dig = self._describe(mt, data, algo, bool(kw.get("set_data")))
        self.blobs[dig] = data
        return dig

    def gen_blob(self, size: int = 2048, **kw: object) -> tuple[str, bytes]:
        import secrets

        data = secrets.token_bytes(size)
        return self.add_blob(data, **kw), data  # type: ignore[arg-type]

    def gen_layer(
        self, num: int, algo: str = "sha256", compress: bool = True, set_data: bool = False
    ) -> tuple[str, str]:
        import gzip
        import io
        import secrets
        import tarfile

        content = (
            f"Conformance test file contents for file number {num}.\n"
            f"Todays lucky number is {secrets.randbelow(2**63)}\n"
        ).encode()
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(f"./conformance-{num}.txt")
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        uncompressed = raw.getvalue()
        body = gzip.compress(uncompressed, mtime=0) if compress else uncompressed
        dig = self._describe(MT_OCI_LAYER_GZ if compress else MT_OCI_LAYER, body, algo, set_data)
        self.blobs[dig] = body
        return dig, oci_digest(uncompressed, algo)

    def gen_config(
        self,
        platform: dict[str, str],
        diff_ids: list[str],
        algo: str = "sha256",
        extra_field: bool = False,
        set_data: bool = False,
    ) -> str:
        doc = {
            "author": "OCI Conformance Test",
            "architecture": platform.get("architecture", ""),
            "os": platform.get("os", ""),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        body = self._json(doc, extra_field)
        dig = self._describe(MT_OCI_CONFIG, body, algo, set_data)
        self.blobs[dig] = body
        return dig

    def _record(
        self,
        mt: str,
        body: bytes,
        algo: str,
        artifact_type: str | None,
        subject: dict[str, object] | None,
        annotations: dict[str, str] | None,
        tag: str | None,
        set_data: bool,
    ) -> str:
        dig = self._describe(mt, body, algo, set_data)
        self.manifests[dig] = body
        self.man_order.append(dig)
        if subject is not None:
            ref: dict[str, object] = {"mediaType": mt, "digest": dig, "size": len(body)}
            ref["artifactType"] = artifact_type or ""
            ref["annotations"] = annotations or {}
            self.referrers.setdefault(str(subject["digest"]), []).append(ref)
        if tag:
            self.tags[tag] = dig
        return dig

    @staticmethod
    def _annotations(annotations: dict[str, str] | None, uniq: bool) -> dict[str, str] | None:
        if not uniq:
            return annotations
        out = dict(annotations or {})
        out[f"org.example.{rand_text()}"] = rand_text()
        return out

    def gen_manifest(
        self,
        config: str,
        layers: list[dict[str, object]],
        algo: str = "sha256",
        artifact_type: str | None = None,
        subject: dict[str, object] | None = None,
        annotations: dict[str, str] | None = None,
        annotation_uniq: bool = False,
        tag: str | None = None,
        extra_field: bool = False,
        set_data: bool = False,
        **_: object,
    ) -> str:
        annotations = self._annotations(annotations, annotation_uniq)
        doc: dict[str, object] = {"schemaVersion": 2, "mediaType": MT_OCI_IMAGE}
        if artifact_type:
            doc["artifactType"] = artifact_type
        doc["config"] = self.desc[config]
        doc["layers"] = layers
        if subject is not None:
            doc["subject"] = subject
        if annotations:
            doc["annotations"] = annotations
        body = self._json(doc, extra_field)
        config_mt = str(self.desc[config]["mediaType"])
        return self._record(
            MT_OCI_IMAGE,
            body,
            algo,
            artifact_type or config_mt,
            subject,
            annotations,
            tag,
            set_data,
        )

    def gen_manifest_full(
        self,
        layer_count: int = 2,
        platform: dict[str, str] | None = None,
        layer_media_type: str = "",
        layer_bytes: bytes | None = None,
        config_media_type: str = "",
        config_bytes: bytes = b"",
        compress: bool = True,
        algo: str = "sha256",
        extra_field: bool = False,
        set_data: bool = False,
        **kw: object,
    ) -> str:
        platform = platform or {"os": "linux", "architecture": "amd64"}
        compressed: list[str] = []
        uncompressed: list[str] = []
        for n in range(layer_count):
            if not layer_media_type or layer_media_type.startswith(MT_OCI_LAYER_PREFIX):
                c_dig, u_dig = self.gen_layer(n, algo, compress, set_data)
            elif layer_bytes is not None:
                c_dig = self.add_blob(layer_bytes, layer_media_type, algo, set_data=set_data)
                u_dig = c_dig
            else:
                c_dig, _ = self.gen_blob(mt=layer_media_type, algo=algo, set_data=set_data)
                u_dig = c_dig
            compressed.append(c_dig)
            uncompressed.append(u_dig)
        if not config_media_type or config_media_type == MT_OCI_CONFIG:
            config = self.gen_config(platform, uncompressed, algo, extra_field, set_data)
        else:
            config = self.add_blob(config_bytes, config_media_type, algo, set_data=set_data)
        layers = [self.desc[d] for d in compressed]
        return self.gen_manifest(
            config, layers, algo=algo, extra_field=extra_field, set_data=set_data, **kw
        )  # type: ignore[arg-type]

    def gen_index(
        self,
        platforms: list[dict[str, str] | None],
        manifests: list[str],
        algo: str = "sha256",
        artifact_type: str | None = None,
        subject: dict[str, object] | None = None,
        annotations: dict[str, str] | None = None,
        annotation_uniq: bool = False,
        tag: str | None = None,
        extra_field: bool = False,
        set_data: bool = False,
        **_: object,
    ) -> str:
        annotations = self._annotations(annotations, annotation_uniq)
        entries = []
        for platform, dig in zip(platforms, manifests, strict=True):
            d = dict(self.desc[dig])
            if platform is not None:
                d["platform"] = platform
            entries.append(d)
        doc: dict[str, object] = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX}
        if artifact_type:
            doc["artifactType"] = artifact_type
        doc["manifests"] = entries
        if subject is not None:
            doc["subject"] = subject
        if annotations:
            doc["annotations"] = annotations
        body = self._json(doc, extra_field)
        return self._record(
            MT_OCI_INDEX, body, algo, artifact_type, subject, annotations, tag, set_data
        )

    def gen_index_full(self, platforms: list[dict[str, str]] | None = None, **kw: object) -> str:
        if platforms is None:
            platforms = [
                {"os": "linux", "architecture": "amd64"},
                {"os": "linux", "architecture": "arm64"},
            ]
        children = [self.gen_manifest_full(platform=p, **kw) for p in platforms]  # type: ignore[arg-type]
        return self.gen_index(list(platforms), children, **kw)  # type: ignore[arg-type]


def build_datasets() -> dict[str, Dataset]:
    """runner.GenerateData with every data type and API of the 1.1+dev configuration on."""
    import secrets

    out: dict[str, Dataset] = {}

    def new(name: str) -> Dataset:
        out[name] = Dataset(name)
        return out[name]

    new("image").gen_manifest_full(tag="image")
    new("image-uncompressed").gen_manifest_full(tag="image-uncompressed", compress=False)
    large = {f"large-annotation-{i}": "A" * 10000 for i in range(390)}
    new("large-manifest").gen_manifest_full(tag="large-manifest", annotations=large)
    new("index").gen_index_full(tag="index")
    td = new("nested-index")
    d1 = td.gen_index_full()
    d2 = td.gen_index_full()
    td.gen_index([None, None], [d1, d2], tag="index-of-index")
    new("empty-index").gen_index_full(tag="index", platforms=[])
    artifact: dict[str, object] = {
        "artifact_type": MT_EXAMPLE1,
        "config_media_type": MT_OCI_EMPTY,
        "config_bytes": b"{}",
        "layer_count": 1,
        "layer_media_type": MT_EXAMPLE1,
    }
    new("artifact").gen_manifest_full(tag="artifact", **artifact)  # type: ignore[arg-type]
    new("artifact-index").gen_index_full(tag="artifact-index", **artifact)
    new("artifact-without-layers").gen_manifest_full(
        tag="artifact-without-layers",
        artifact_type=MT_EXAMPLE1,
        config_media_type=MT_OCI_EMPTY,
        config_bytes=b"{}",
        layer_count=1,
        layer_bytes=b"{}",
        layer_media_type=MT_OCI_EMPTY,
    )
    conformance = {"org.opencontainers.conformance": "hello conformance test"}
    td = new("artifacts-with-subject")
    subj = td.desc[td.gen_manifest_full(tag="image")]
    td.gen_manifest_full(subject=subj)
    for at, layer_mt, tag in (
        (MT_EXAMPLE1, MT_EXAMPLE1, "tagged-artifact1"),
        (MT_EXAMPLE2, MT_OCTET, "tagged-artifact2"),
    ):
        td.gen_manifest_full(
            artifact_type=at,
            annotations=conformance,
            annotation_uniq=True,
            config_media_type=MT_OCI_EMPTY,
            config_bytes=b"{}",
            layer_count=1,
            layer_media_type=layer_mt,
            subject=subj,
            tag=tag,
        )
    td = new("index-with-subject")
    subj = td.desc[td.gen_index_full(tag="index")]
    td.gen_index_full(
        artifact_type=MT_EXAMPLE1,
        annotations=conformance,
        annotation_uniq=True,
        config_media_type=MT_OCI_EMPTY,
        config_bytes=b"{}",
        layer_count=1,
        layer_media_type=MT_EXAMPLE1,
        subject=subj,
        tag="tagged-artifact",
    )
    td = new("missing-subject")
    td.gen_manifest_full(
        artifact_type=MT_EXAMPLE1,
        annotations=conformance,
        annotation_uniq=True,
        config_media_type=MT_OCI_EMPTY,
        config_bytes=b"{}",
        layer_count=1,
        layer_media_type=MT_EXAMPLE1,
        subject={
            "mediaType": MT_OCI_IMAGE,
            "size": 123,
            "digest": oci_digest(b"missing content"),
        },
        tag="tagged-artifact",
    )
    new("data-field").gen_manifest_full(tag="data-field", set_data=True)
    td = new("non-distributable-layers")
    conf_digs: list[str] = []
    layers: list[dict[str, object]] = []
    for mt, size in ((MT_OCI_LAYER_ND_GZ, 123456), (MT_OCI_LAYER_ND, 12345)):
        dig = oci_digest(secrets.token_bytes(256))
        conf_digs.append(dig)
        layers.append(
            {
                "mediaType": mt,
                "digest": dig,
                "size": size,
                "urls": ["https://store.example.com/blobs/sha256/" + dig.split(":")[1]],
            }
        )
    c_dig, u_dig = td.gen_layer(1)
    conf_digs.append(u_dig)
    layers.append(td.desc[c_dig])
    conf = td.gen_config({"os": "linux", "architecture": "amd64"}, conf_digs)
    td.gen_manifest(conf, layers, tag="non-distributable-image")
    new("custom-fields").gen_index_full(tag="custom-fields", extra_field=True)
    new("no-layers").gen_manifest_full(tag="no-layers", layer_count=0)
    new("sha512").gen_index_full(algo="sha512")
    for algo in ("sha256", "sha512"):
        name = f"tag-param-{algo}"
        td = new(name)
        td.gen_index_full(tag=name, algo=algo)
        for i, dig in enumerate(td.man_order):
            td.tags[f"{name}-{i}"] = dig
            td.tag_param.add(dig)
    td = new("bad-digest-image")
    dig = td.gen_manifest_full()
    td.bad_digest.add(dig)
    td.manifests[dig] += b"  "
    return out


def push_dataset(c: httpx.Client, repo: str, td: Dataset) -> None:
    """runner.TestPush: every blob (rotating over the upload APIs), manifests, then tags."""
    for i, (dig, body) in enumerate(td.blobs.items()):
        BLOB_PUSHERS[i % len(BLOB_PUSHERS)](c, repo, dig, body)
    for dig in td.man_order:
        tags = [t for t, d in td.tags.items() if d == dig] if dig in td.tag_param else []
        manifest_put(
            c, repo, dig, dig, td.manifests[dig], tags=tags, expect_bad=dig in td.bad_digest
        )
        td.tag_pushed.update(tags)
    for tag, dig in td.tags.items():
        if tag not in td.tag_pushed:
            manifest_put(c, repo, tag, dig, td.manifests[dig])
            td.tag_pushed.add(tag)


class LegacyData:
    """The fixed test data of the Ginkgo suite's setup.go (configs, manifests, blobs, refs)."""

    # base64 of a small tarball holding test.txt (setup.go's layerBase64String)
    LAYER_B64 = (
        "H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0"
        "WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD"
        "jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA"
    )
    ANNOTATION_KEY = "org.opencontainers.conformance.test"
    REF_TYPE_A = "application/vnd.nhl.peanut.butter.bagel"
    REF_TYPE_B = "application/vnd.nba.strawberry.jam.croissant"
    REF_TYPE_INDEX = "application/vnd.food.stand"
    NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"
    INVALID_MANIFEST = b"blablabla"
    DUMMY_DIGEST = oci_digest(b"hello world")
    EMPTY_JSON = b"{}"

    def __init__(self) -> None:
        import base64
        import json
        import secrets

        def dumps(doc: object) -> bytes:
            return json.dumps(doc, indent="\t").encode()

        self.configs: list[bytes] = []
        for _ in range(4 + 1):
            author = "".join(
                secrets.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")
                for _ in range(16)
            )
            config = {
                "author": author,
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }
            self.configs.append(dumps(config))
        self.layer = base64.b64decode(self.LAYER_B64)
        self.layer_digest = oci_digest(self.layer)
        layers = [
            {
                "mediaType": MT_OCI_LAYER_GZ,
                "digest": self.layer_digest,
                "size": len(self.layer),
                "data": None,
                "newUnspecifiedField": None,
            }
        ]

        def config_desc(i: int) -> dict[str, object]:
            return {
                "mediaType": MT_OCI_CONFIG,
                "digest": oci_digest(self.configs[i]),
                "size": len(self.configs[i]),
                "data": base64.b64encode(self.configs[i]).decode(),
                "newUnspecifiedField": base64.b64encode(b"hello world").decode(),
            }

        self.manifests = [
            dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MT_OCI_IMAGE,
                    "config": config_desc(i),
                    "layers": layers,
                }
            )
            for i in range(len(self.configs))
        ]
        self.empty_layer_manifest = dumps(
            {"schemaVersion": 2, "config": config_desc(1), "layers": []}
        )
        self.blob_a = secrets.token_bytes(42)
        self.blob_b = secrets.token_bytes(42)
        half = 42 // 2 + 1
        self.blob_b_chunks = (self.blob_b[:half], self.blob_b[half:])
        self.blob_b_ranges = (f"0-{half - 1}", f"{half}-{41}")
        # referrers (03_discovery_test.go)
        empty = {"mediaType": MT_OCI_EMPTY, "size": 2, "digest": oci_digest(self.EMPTY_JSON)}
        self.ref_blob_a = b"NHL Peanut Butter on my NHL bagel"
        self.ref_blob_b = b"NBA Strawberry Jam on my NBA croissant"

        def subject(i: int) -> dict[str, object]:
            return {
                "mediaType": MT_OCI_IMAGE,
                "size": len(self.manifests[i]),
                "digest": oci_digest(self.manifests[i]),
            }

        def blob_desc(mt: str, data: bytes) -> dict[str, object]:
            return {"mediaType": mt, "size": len(data), "digest": oci_digest(data)}

        self.annotations: dict[str, str] = {}

        def artifact(
            config: dict[str, object],
            layer: dict[str, object],
            subj: int,
            artifact_type: str | None,
            note: str | None,
        ) -> bytes:
            doc: dict[str, object] = {"schemaVersion": 2, "mediaType": MT_OCI_IMAGE}
            if artifact_type:
                doc["artifactType"] = artifact_type
            doc.update({"config": config, "layers": [layer], "subject": subject(subj)})
            if note:
                doc["annotations"] = {self.ANNOTATION_KEY: note}
            body = dumps(doc)
            if note:
                self.annotations[oci_digest(body)] = note
            return body

        a_conf = blob_desc(self.REF_TYPE_A, self.ref_blob_a)
        b_conf = blob_desc(self.REF_TYPE_B, self.ref_blob_b)
        self.refs_a_config = artifact(a_conf, empty, 4, None, "test config a")
        self.refs_b_config = artifact(b_conf, empty, 4, None, "test config b")
        self.refs_a_layer = artifact(empty, a_conf, 4, self.REF_TYPE_A, "test layer a")
        self.refs_b_layer = artifact(empty, b_conf, 4, self.REF_TYPE_B, "test layer b")
        self.refs_c_layer = artifact(empty, b_conf, 3, self.REF_TYPE_B, None)
        index_doc = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "artifactType": self.REF_TYPE_INDEX,
            "manifests": [
                blob_desc(MT_OCI_IMAGE, self.refs_a_config),
                blob_desc(MT_OCI_IMAGE, self.refs_a_layer),
            ],
            "subject": subject(4),
            "annotations": {self.ANNOTATION_KEY: "test index"},
        }
        self.refs_index = dumps(index_doc)
        self.annotations[oci_digest(self.refs_index)] = "test index"

    @staticmethod
    def push_blob(c: httpx.Client, repo: str, data: bytes) -> httpx.Response:
        """The setup steps' POST then PUT with ?digest=, expecting a 2xx."""
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        r = c.put(
            _upload_url(r.headers["location"], digest=oci_digest(data)),
            content=data,
            headers={"Content-Type": MT_OCTET},
        )
        assert 200 <= r.status_code < 300, r.text
        return r

    @staticmethod
    def push_manifest(
        c: httpx.Client, repo: str, ref: str, body: bytes, mt: str = MT_OCI_IMAGE
    ) -> httpx.Response:
        r = c.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": mt})
        assert 200 <= r.status_code < 300, r.text
        return r


def assert_deleted_or_absent(resp: httpx.Response, *allowed: int) -> None:
    """Teardown checks: 2xx, or one of the statuses the suite allows."""
    assert 200 <= resp.status_code < 300 or resp.status_code in allowed, resp.text
