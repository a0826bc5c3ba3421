"""Fuzzing the real /v2/ and /api/v0/ surface of a running replica (issue 9, item 13).

hypothesis builds hostile requests (odd methods; raw paths with percent-encoded control
characters, unicode, `..` and overlong names; query strings; Range, Content-Range,
Content-Length, Content-Type, Transfer-Encoding and Authorization headers; bodies of random
bytes, cut-short or deeply nested JSON, manifests with random fields) and sends them byte for
byte over a socket (httpx would normalize them). Every answer must be below 500, every 4xx
under /v2/ must carry the OCI error envelope, nothing may hang, and afterwards the images
pushed before the fuzzing pull back byte-identical and nothing outside the replica's data
directory has changed.

`make test` runs the derandomized "ci" profile (about a minute); `make fuzz` runs random
examples, FUZZ_EXAMPLES of them per test (e.g. `make fuzz FUZZ_EXAMPLES=5000`).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import pytest
from harness.process import AUTH
from harness.replica import Replica
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import rawhttp
from tests.rawhttp import Image, RawResponse, assert_pulls_back, push_image

_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": list(HealthCheck),
    "print_blob": True,
}
settings.register_profile("moorage-ci", max_examples=1, derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("moorage-fuzz", derandomize=False, **_COMMON)  # type: ignore[arg-type]
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0") or 0)


def profile(ci_examples: int) -> settings:
    """The examples of one test: a fixed count in CI, FUZZ_EXAMPLES under `make fuzz`."""
    if FUZZ_EXAMPLES:
        return settings(settings.get_profile("moorage-fuzz"), max_examples=FUZZ_EXAMPLES)
    return settings(settings.get_profile("moorage-ci"), max_examples=ci_examples)


TIMEOUT = 60.0  # seconds without a complete answer: a hang
HUGE = "9" * 5000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPES = [
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.empty.v1+json",
    "application/json",
    "application/octet-stream",
    "",
]
# Fragments spliced into identifiers: percent-encoded control characters, traversal,
# encoded separators, invalid UTF-8, unicode digits and look-alikes, stray escapes.
HOSTILE = [
    "%00",
    "%01",
    "%09",
    "%0a",
    "%0A",
    "%0d",
    "%0D%0A",
    "%1b",
    "%7f",
    "%c2%85",
    "%e2%80%a8",
    "..",
    "%2e%2e",
    "%2E%2E",
    ".",
    "%2f",
    "%2F",
    "/",
    "//",
    "/../",
    "%5c",
    "%ff",
    "%fe%ff",
    "%c0%af",
    "%",
    "%zz",
    "%25",
    "%20",
    "+",
    ";",
    ":",
    "%3a",
    "@",
    "*",
    "%c2%b2",
    "%d9%a3",
    "%ef%bf%bd",
    "%e2%80%ae",
    "%f0%9f%90%b3",
    "A",
    "_",
    "__",
    "-",
]
NUMBERS = [
    "0",
    "1",
    "2",
    "100",
    "10001",
    "-1",
    "1.5",
    "1e3",
    "0x10",
    " 1",
    "%C2%B2",
    "%D9%A3",
    "1%0A",
    HUGE,
    "0" * 5000 + "1",
    "",
]
RANGES = [
    "bytes=0-",
    "bytes=0-0",
    "bytes=1-3",
    "bytes=-1",
    "bytes=-0",
    "bytes=5-1",
    "bytes=0-1,3-4",
    "bytes=99999-",
    f"bytes=0-{HUGE}",
    f"bytes=-{HUGE}",
    f"bytes={HUGE}-",
    "bytes=\xb2-",
    "bytes=0-\xb2",
    "items=0-1",
    "bytes=",
    "bytes=-",
    "bytes 0-1",
]
CONTENT_RANGES = [
    "0-0",
    "0-9",
    "0-3",
    "bytes 0-9/10",
    "bytes=0-3",
    "bytes 0-3/*",
    "9-0",
    "0-",
    "*/10",
    f"{HUGE}-{HUGE}",
    f"0-{HUGE}",
    "\xb2-3",
    "0-\xb2",
    "-1-3",
]
TOKENS = [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"TRACE"]


@dataclass
class Target:
    """The replica under fuzzing and what the fuzzer may aim at."""

    replica: Replica
    site: Path
    kept: list[Image]
    base: Image
    uploads: list[str]
    outside: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    log_start: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    slowest: tuple[float, str] = (0.0, "")
    #: The share of each test's CI examples this target runs (`make fuzz` runs FUZZ_EXAMPLES).
    ci_share: float = 1.0
    #: What of the blob store lies outside the replica's own part (None: nothing to check).
    store_outside: Callable[[], object] | None = None
    store_before: object = None

    @property
    def names(self) -> list[str]:
        return [self.base.repo, "fuzz/other", "library/busybox", "a", "a/b/c", "fuzz"]

    @property
    def digests(self) -> list[str]:
        return [self.base.digest, *self.base.blobs, "sha256:" + "0" * 64]

    def snapshot_outside(self) -> dict[str, tuple[bytes, int]]:
        """Every file of the test's site outside the data directory (and its log)."""
        found = {}
        for path in sorted(self.site.rglob("*")):
            rel = path.relative_to(self.site)
            if rel.parts[0] == "data" or not path.is_file() or path == self.replica.log:
                continue
            found[str(rel)] = (path.read_bytes(), path.stat().st_mtime_ns)
        return found

    def assert_intact(self) -> None:
        with self.replica.client() as c:
            assert c.get("/_ping").json() == {"healthy": True}
            for image in self.kept:
                assert_pulls_back(c, image)
        assert self.snapshot_outside() == self.outside
        if self.store_outside is not None:
            assert self.store_outside() == self.store_before
        with open(self.replica.log, "rb") as fh:
            fh.seek(self.log_start)
            log = fh.read()
        assert b"Traceback" not in log, log[-3000:].decode(errors="replace")


@contextmanager
def fuzz_target(site: Path, storage: str | None = None) -> Iterator[Target]:
    """A replica under `site`/data (its blobs in `storage`, else there) with images to keep
    and a repository to aim at, started and stopped here."""
    (site / "canary.txt").write_bytes(secrets.token_bytes(64))
    (site / "outside").mkdir()
    (site / "outside" / "secret").write_text("not for the registry\n")
    replica = Replica(site / "data", storage=storage)
    replica.start()
    try:
        with replica.client() as c:
            # Images the fuzzer never names (random repositories): they must survive.
            kept = [
                push_image(
                    c, f"kept-{secrets.token_hex(4)}/image", "v1", secrets.token_bytes(3000)
                ),
                push_image(c, f"kept-{secrets.token_hex(4)}/other", "stable", b"layer" * 100),
            ]
            # What the fuzzer aims at (and may delete): a repository with an image and
            # uploads in progress.
            base = push_image(c, "fuzz/base", "v1", b"0123456789" * 50)
            uploads = [c.post("/v2/fuzz/base/blobs/uploads/").headers["location"] for _ in range(8)]
        fuzz = Target(replica, site, kept, base, uploads)
        fuzz.outside = fuzz.snapshot_outside()
        fuzz.log_start = replica.log.stat().st_size
        yield fuzz
    finally:
        replica.stop()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with fuzz_target(tmp_path_factory.mktemp("fuzz")) as fuzz:
        yield fuzz


# -- strategies ------------------------------------------------------------------------------
def splice(text: str, inserts: list[tuple[int, str]]) -> str:
    for position, fragment in inserts:
        at = position % (len(text) + 1)
        text = text[:at] + fragment + text[at:]
    return text


def encoded_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Arbitrary unicode, percent-encoded (UTF-8) as a client would send it."""
    return st.text(max_size=max_size).map(lambda t: quote(t, safe="/:@-._~"))


def identifier(known: list[str], valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A known or well-formed identifier, often with hostile fragments spliced in."""
    plain = st.one_of(st.sampled_from(known), st.sampled_from(known), valid)
    fragments = st.lists(
        st.tuples(st.integers(0, 1000), st.sampled_from(HOSTILE)), min_size=1, max_size=3
    )
    return st.one_of(
        plain,
        plain,
        st.builds(splice, plain, fragments),
        encoded_text(),
        st.builds(
            lambda unit, n: unit * n,
            st.sampled_from(["a", "a/", "ab-", "%0a"]),
            st.integers(60, 400),
        ),
        st.sampled_from(["", ".", "..", "%2e%2e", "_catalog", "uploads", "list"]),
    )


VALID_NAME = st.from_regex(
    r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,4}){0,2}(?:/[a-z0-9]{1,8}){0,2}", fullmatch=True
)
VALID_TAG = st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}", fullmatch=True)
VALID_DIGEST = st.one_of(
    st.binary(max_size=16).map(lambda b: "sha256:" + hashlib.sha256(b).hexdigest()),
    st.binary(max_size=16).map(lambda b: "sha512:" + hashlib.sha512(b).hexdigest()),
    st.from_regex(r"(md5|sha256|sha384|blake3|sha256\+b64):[a-f0-9A-Z=_-]{1,70}", fullmatch=True),
)


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(MEDIA_TYPES),
        st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "é" * 300, "sha256:" + "a" * 64]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=20,
    )


def mutated_manifest(fuzz: Target) -> st.SearchStrategy[bytes]:
    """The base image's manifest (or an index of it) with random fields changed."""
    base = json.loads(fuzz.base.manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": fuzz.base.digest, "size": len(fuzz.base.manifest)}
        ],
    }
    paths = [
        ("schemaVersion",),
        ("mediaType",),
        ("artifactType",),
        ("config",),
        ("config", "digest"),
        ("config", "size"),
        ("config", "mediaType"),
        ("layers",),
        ("layers", 0),
        ("layers", 0, "digest"),
        ("layers", 0, "size"),
        ("layers", 0, "mediaType"),
        ("manifests",),
        ("manifests", 0, "digest"),
        ("subject",),
        ("subject", "digest"),
        ("annotations",),
        ("annotations", "k"),
    ]
    values = st.one_of(
        json_values(), st.sampled_from(fuzz.digests), VALID_DIGEST, st.sampled_from(MEDIA_TYPES)
    )

    def build(doc: dict[str, Any], changes: list[tuple[tuple[Any, ...], Any, bool]]) -> bytes:
        doc = json.loads(json.dumps(doc))
        for path, value, delete in changes:
            node: Any = doc
            for key in path[:-1]:
                if isinstance(node, dict):
                    node = node.setdefault(key, {})
                elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                    node = node[key]
                else:
                    break
            else:
                last = path[-1]
                if isinstance(node, dict):
                    if delete:
                        node.pop(last, None)
                    else:
                        node[last] = value
                elif isinstance(node, list) and isinstance(last, int) and last < len(node):
                    node[last] = value
        return json.dumps(doc).encode()

    change = st.tuples(st.sampled_from(paths), values, st.booleans())
    subject = {
        "mediaType": OCI_MANIFEST,
        "digest": fuzz.base.digest,
        "size": len(fuzz.base.manifest),
    }
    docs = st.sampled_from(
        [base, index, {**base, "subject": subject}, {**base, "artifactType": "x/y"}]
    )
    return st.builds(build, docs, st.lists(change, max_size=4))


def bodies(fuzz: Target) -> st.SearchStrategy[bytes]:
    def cut(data: bytes, at: int) -> bytes:
        return data[: at % (len(data) + 1)]

    json_text = json_values().map(lambda v: json.dumps(v).encode())
    return st.one_of(
        st.just(b""),
        st.binary(max_size=2048),
        json_text,
        st.builds(cut, st.one_of(json_text, mutated_manifest(fuzz)), st.integers(0, 4000)),
        st.sampled_from([100, 1000, 30000]).map(lambda n: b"[" * n + b"]" * n),
        st.sampled_from([1000, 20000]).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        mutated_manifest(fuzz),
        st.just(fuzz.base.manifest),
        st.just(b"{}"),
        st.just(b"x" * (4 * 1024 * 1024 + 1)),
    )


class Request:
    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        half_close: bool = False,
        malformed: bool = False,  # broken at the HTTP level: the server itself may refuse it
        source: str | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.half_close = half_close
        self.malformed = malformed
        self.source = source

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's reports
        printer.text(repr(self))

    def __repr__(self) -> str:
        body = self.body[:300] + (b"..." if len(self.body) > 300 else b"")
        head = [(k, v[:200]) for k, v in self.headers]
        return (
            f"Request({self.method!r}, {self.target[:600]!r}, headers={head!r}, body={body!r} "
            f"({len(self.body)} bytes), half_close={self.half_close}, malformed={self.malformed})"
        )


# Loopback addresses to send requests with hostile credentials from (127.100.0.1 on).
_SOURCES = (f"127.100.{i // 254 % 256}.{i % 254 + 1}" for i in itertools.count())


def _basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


AUTHORIZATIONS = [
    None,
    b"Bearer abc",
    b"Basic",
    b"Basic !!!",
    b"Basic " + base64.b64encode(b"no-colon"),
    b"Basic " + base64.b64encode("nobody:\xe9".encode("latin-1")),
    b"Basic \xe9\xe9",
    b"Basic " + "é:é".encode(),
    _basic("nobody", "x"),
    _basic("nobody", "wrong"),
    _basic("", ""),
    b"Basic " + base64.b64encode(b"a" * 3000),
]


# hypothesis favours the simplest choice (the first of a sampled_from, 0, False): odds are
# written so that the simplest choice is the ordinary one.
ONE_IN_4 = st.sampled_from([False, False, False, True])
ONE_IN_10 = st.sampled_from([False] * 9 + [True])
METHODS = st.one_of(  # one_of picks a branch uniformly: mostly real methods
    st.sampled_from(TOKENS),
    st.sampled_from(TOKENS),
    st.sampled_from(TOKENS),
    st.sampled_from([b"get", b"CONNECT", b"PROPFIND", b"M-SEARCH", b"FOO" + b"1" * 40]),
    st.from_regex(rb"[A-Z]{1,12}", fullmatch=True),
)
HEADER_VALUES = (
    (b"Range", st.one_of(st.sampled_from(RANGES), st.text(max_size=30))),
    (b"Content-Range", st.one_of(st.sampled_from(CONTENT_RANGES), st.text(max_size=30))),
    (b"Content-Type", st.one_of(st.sampled_from(MEDIA_TYPES), st.text(max_size=40))),
)
FRAMINGS = st.sampled_from(["length"] * 8 + ["short", "long", "junk", "chunked", "broken", "none"])
JUNK_LENGTHS = st.sampled_from([b"-1", b"\xb2", b"1e3", HUGE.encode(), b"", b"1, 2"])
ENCODINGS = st.sampled_from([b"chunked", b"gzip, chunked", b"gzip"])
BROKEN_CHUNKS = st.sampled_from([b"zz\r\n", b"10\r\nabc", b"3\r\nabcdef\r\n0\r\n\r\n", b""])
QUERY_KEYS = st.one_of(
    st.sampled_from(["n", "last", "digest", "mount", "from", "tag", "artifactType", "writable"]),
    encoded_text(10),
)


def bad_header(value: bytes) -> bool:
    """Control bytes in a header value: the HTTP server's to refuse."""
    return any((b < 0x20 and b != 0x09) or b == 0x7F for b in value)


def methods_for(path: str) -> list[bytes]:
    """The methods the endpoint a path looks like answers (so most requests go deep)."""
    path = path.split("?", 1)[0]
    for suffix, methods in (
        ("/tags/list", [b"GET"]),
        ("/_catalog", [b"GET"]),
        ("/blobs/uploads/", [b"POST"]),
        ("/api/v0/cluster/join", [b"POST"]),
        ("/api/v0/cluster/remove", [b"POST"]),
        ("/api/v0/cluster/storage-probe", [b"POST"]),
        ("/join/promote", [b"POST"]),
        ("/join/end", [b"POST"]),
    ):
        if path.endswith(suffix):
            return methods
    for part, methods in (
        ("/blobs/uploads/", [b"GET", b"PATCH", b"PUT", b"DELETE"]),
        ("/manifests/", [b"GET", b"HEAD", b"PUT", b"DELETE"]),
        ("/blobs/", [b"GET", b"HEAD", b"DELETE"]),
    ):
        if part in path:
            return methods
    return [b"GET", b"HEAD"]


def requests(fuzz: Target, paths: st.SearchStrategy[str]) -> st.SearchStrategy[Request]:
    """Requests to `paths` with hostile methods, query strings, headers, framing, bodies."""
    query_values = st.one_of(
        st.sampled_from(NUMBERS),
        st.sampled_from(["@body", *fuzz.digests]),
        identifier(fuzz.digests, VALID_DIGEST),
        identifier(["v1", "latest", "nl"], VALID_TAG),
        identifier(fuzz.names, VALID_NAME),
        st.sampled_from(MEDIA_TYPES).map(lambda t: quote(t, safe="")),
    )
    queries = st.lists(st.tuples(QUERY_KEYS, query_values, st.booleans()), max_size=4).map(
        lambda pairs: "&".join(f"{k}={v}" if eq else k for k, v, eq in pairs)
    )
    body_strategy = bodies(fuzz)

    @st.composite
    def draw_request(draw: st.DrawFn) -> Request:
        path = draw(paths)
        method = draw(METHODS) if draw(ONE_IN_4) else draw(st.sampled_from(methods_for(path)))
        query = draw(queries)
        with_body = method not in (b"GET", b"HEAD") or draw(st.booleans())
        body = draw(body_strategy) if with_body else b""
        query = query.replace("@body", "sha256:" + hashlib.sha256(body).hexdigest())
        target = (path + ("?" + query if query else "")).encode()
        headers: list[tuple[bytes, bytes]] = []
        malformed = half_close = False
        hostile_auth = draw(ONE_IN_10)
        auth = draw(st.sampled_from(AUTHORIZATIONS)) if hostile_auth else _basic(*AUTH)
        # Failed logins are limited per client address: each hostile one comes from an
        # address of its own, so the limits never refuse the fuzzer's good requests.
        source = next(_SOURCES) if hostile_auth else None
        if auth is not None:
            headers.append((b"Authorization", auth))
        for name, choices in HEADER_VALUES:
            if draw(ONE_IN_4):
                value = draw(choices).encode("utf-8").replace(b"\r", b"").replace(b"\n", b"")
                malformed |= bad_header(value)
                headers.append((name, value))
        framing = draw(FRAMINGS)
        if framing == "length":
            headers.append((b"Content-Length", str(len(body)).encode()))
        elif framing == "short" and body:
            headers.append((b"Content-Length", str(len(body) // 2).encode()))
        elif framing == "long":
            headers.append((b"Content-Length", str(len(body) + 10).encode()))
            half_close = True
        elif framing == "junk":
            headers.append((b"Content-Length", draw(JUNK_LENGTHS)))
            malformed = half_close = True
        elif framing == "chunked":
            headers.append((b"Transfer-Encoding", b"chunked"))
            body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        elif framing == "broken":
            headers.append((b"Transfer-Encoding", draw(ENCODINGS)))
            body = draw(BROKEN_CHUNKS) + body[:100]
            malformed = half_close = True
        if draw(ONE_IN_10):
            junk = draw(st.binary(max_size=40)).replace(b"\r", b"").replace(b"\n", b"")
            headers.append((b"X-Fuzz", junk))
            malformed = True  # raw control bytes in a header value are the server's to refuse
        malformed |= any(b < 0x21 or b >= 0x7F for b in target) or len(target) > 8000
        return Request(method, target, headers, body, half_close, malformed, source)

    return draw_request()


def v2_paths(fuzz: Target) -> st.SearchStrategy[str]:
    names = identifier(fuzz.names, VALID_NAME)
    refs = identifier(["v1", "latest", *fuzz.digests], st.one_of(VALID_TAG, VALID_DIGEST))
    digests = identifier(fuzz.digests, VALID_DIGEST)
    upload_ids = identifier(
        [u.rsplit("/", 1)[1] for u in fuzz.uploads], st.from_regex(r"[a-f0-9]{32}", fullmatch=True)
    )
    prefix = st.sampled_from(
        ["/v2/"] * 8 + ["/v2//", "/v2/./", "/v2/%2e%2e/", "//v2/", "/V2/", "/v2%2f", "/v2/%0a"]
    )
    return st.one_of(
        st.sampled_from(["/v2/", "/v2", "/v2/_catalog", "/v2/_catalog/", "/v2/_catalog%0a"]),
        st.builds(lambda p, n: f"{p}{n}/tags/list", prefix, names),
        st.builds(lambda p, n, r: f"{p}{n}/manifests/{r}", prefix, names, refs),
        st.builds(lambda p, n, d: f"{p}{n}/blobs/{d}", prefix, names, digests),
        st.builds(
            lambda p, n, s: f"{p}{n}/blobs/uploads{s}",
            prefix,
            names,
            st.sampled_from(["/", "", "//"]),
        ),
        st.builds(lambda p, n, u: f"{p}{n}/blobs/uploads/{u}", prefix, names, upload_ids),
        st.sampled_from(fuzz.uploads),
        st.builds(lambda p, n, d: f"{p}{n}/referrers/{d}", prefix, names, digests),
        st.builds(lambda p, rest: p + rest, prefix, encoded_text(80)),
    )


def admin_paths() -> st.SearchStrategy[str]:
    known = [
        "/api/v0/cluster/status",
        "/api/v0/cluster/join",
        "/api/v0/cluster/join/promote",
        "/api/v0/cluster/join/end",
        "/api/v0/cluster/remove",
        "/api/v0/cluster/storage-probe",
        "/api/v0/cluster/local-revision",
        "/api/v0/cluster/backup",
        "/api/v0/health",
        "/_ping",
        "/_ping?writable=1",
        "/metrics",
        "/",
        "*",
    ]
    return st.one_of(
        st.sampled_from(known),
        st.builds(
            splice,
            st.sampled_from(known),
            st.lists(
                st.tuples(st.integers(0, 60), st.sampled_from(HOSTILE)), min_size=1, max_size=2
            ),
        ),
        st.builds(lambda rest: "/api/v0/" + rest, encoded_text(40)),
    )


def admin_bodies() -> st.SearchStrategy[bytes]:
    fields = st.sampled_from(
        ["replica_id", "peer_url", "member_id", "replica_ids", "force", "unsafe"]
    )
    values = st.one_of(
        json_values(),
        st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
        st.from_regex(r"[0-9a-f]{1,20}", fullmatch=True),
        st.sampled_from(
            ["http://127.0.0.1:1", "http://[::1]:99999", "ftp://x", "http://:80", HUGE]
        ),
        st.lists(st.text(max_size=14), max_size=3),
    )
    return st.dictionaries(fields, values, max_size=4).map(lambda d: json.dumps(d).encode())


# -- the exchange and its assertions -----------------------------------------------------------
def decoded_path(target: bytes) -> str:
    path = target.split(b"?", 1)[0]
    if path.startswith(b"http://"):
        path = b"/" + path.split(b"/", 3)[-1]
    return unquote_to_bytes(path).decode("utf-8", "replace")


def is_server_refusal(resp: RawResponse) -> bool:
    """granian's own answer to a request broken at the HTTP level (no app involved): it
    has no `server` header, which granian adds to the application's answers."""
    return resp.header("server") is None


def send(port: int, req: Request) -> RawResponse | None:
    """`req` sent as it is; None when the connection closed without an answer, which only
    a malformed request may get."""
    try:
        resp = rawhttp.request(
            port,
            req.method,
            req.target,
            req.headers,
            req.body,
            auth=False,
            timeout=TIMEOUT,
            half_close=req.half_close,
            source=req.source,
        )
    except ValueError:  # the connection closed without an answer
        assert req.malformed, f"no answer to a well-formed request: {req!r}"
        return None
    assert resp is not None
    return resp


def exchange(fuzz: Target, req: Request) -> RawResponse | None:
    started = time.monotonic()
    resp = send(fuzz.replica.port, req)
    if resp is None:
        return None
    elapsed = time.monotonic() - started
    if elapsed > fuzz.slowest[0]:
        fuzz.slowest = (elapsed, repr(req)[:400])
    key = f"{resp.status // 100}xx"
    fuzz.counts[key] = fuzz.counts.get(key, 0) + 1
    if os.environ.get("FUZZ_VERBOSE"):
        code = resp.body[:60].decode(errors="replace").split('"code":"')[-1][:24]
        detail = f"{resp.status} {code if resp.status >= 400 else ''}"
        fuzz.counts[detail] = fuzz.counts.get(detail, 0) + 1
    assert resp.status < 500, f"{resp.status} {resp.body[:500]!r} for {req!r}"
    if is_server_refusal(resp):
        assert req.malformed or resp.status in (400, 404, 405, 414), (resp.status, req)
        return resp
    path = decoded_path(req.target)
    if (path == "/v2" or path.startswith("/v2/")) and resp.status >= 400 and req.method != b"HEAD":
        assert (resp.header("content-type") or "").startswith("application/json"), req
        doc = resp.json()
        assert isinstance(doc, dict), doc
        assert isinstance(doc["errors"], list), doc
        assert doc["errors"], doc
        for error in doc["errors"]:
            assert isinstance(error["code"], str), doc
            assert isinstance(error["message"], str), doc
    return resp


def run_fuzz(
    fuzz: Target,
    strategy: st.SearchStrategy[Request],
    examples: int,
    prepare: Callable[[Request], None] | None = None,
) -> None:
    @profile(max(1, round(examples * fuzz.ci_share)))
    @given(req=strategy)
    def one(req: Request) -> None:
        if prepare is not None:
            prepare(req)
        exchange(fuzz, req)

    started = time.monotonic()
    fuzz.counts.clear()
    one()
    print(f"fuzz: {fuzz.counts} in {time.monotonic() - started:.0f} s; slowest {fuzz.slowest}")
    fuzz.assert_intact()


def test_fuzz_v2(target: Target) -> None:
    run_fuzz(target, requests(target, v2_paths(target)), examples=3000)


def test_fuzz_manifests(target: Target) -> None:
    """PUT of mutated manifests (by tag, by digest, with ?tag=) and reads of what landed."""
    names = st.sampled_from([target.base.repo, "fuzz/other"])
    refs = st.one_of(st.sampled_from(["v1", "latest"]), VALID_TAG, st.just("@digest"))
    manifests = mutated_manifest(target)
    tag_lists = st.lists(identifier(["v1", "nl"], VALID_TAG), max_size=3)

    @st.composite
    def puts(draw: st.DrawFn) -> Request:
        body = draw(manifests)
        ref = draw(refs).replace("@digest", "sha256:" + hashlib.sha256(body).hexdigest())
        tags = draw(tag_lists)
        query = "&".join(f"tag={t}" for t in tags)
        path = f"/v2/{draw(names)}/manifests/{ref}" + (f"?{query}" if query else "")
        headers = [(b"Authorization", _basic(*AUTH)), (b"Content-Length", str(len(body)).encode())]
        content_type = draw(st.sampled_from([*MEDIA_TYPES, None]))
        if content_type is not None:
            headers.append((b"Content-Type", content_type.encode()))
        return Request(b"PUT", path.encode(), headers, body, malformed=False)

    run_fuzz(target, puts(), examples=1000)


def test_fuzz_admin_api(target: Target) -> None:
    """The admin API and the health endpoints; half of the requests are POSTs of JSON
    objects with the fields the admin endpoints read, holding random values."""
    base = requests(target, admin_paths())
    json_bodies = admin_bodies()
    posts = st.sampled_from(
        [
            "/api/v0/cluster/join",
            "/api/v0/cluster/join/promote",
            "/api/v0/cluster/join/end",
            "/api/v0/cluster/remove",
            "/api/v0/cluster/storage-probe",
        ]
    )

    @st.composite
    def admin(draw: st.DrawFn) -> Request:
        req = draw(base)
        if draw(st.booleans()):
            body = draw(json_bodies)
            req.method = b"POST"
            req.target = draw(posts).encode()
            req.malformed = any(name == b"X-Fuzz" or bad_header(v) for name, v in req.headers)
            req.body = body
            req.half_close = False
            req.headers = [
                (k, v) for k, v in req.headers if k not in (b"Content-Length", b"Transfer-Encoding")
            ]
            req.headers.append((b"Content-Length", str(len(body)).encode()))
        return req

    run_fuzz(target, admin(), examples=800)


def test_fuzz_uploads(target: Target) -> None:
    """Chunks with hostile Content-Range/Content-Length/bodies against live uploads."""

    base = requests(target, st.sampled_from(["@fresh", "@fresh", *target.uploads]))
    methods = st.sampled_from([b"PATCH", b"PATCH", b"PUT", b"GET", b"DELETE"])

    @st.composite
    def chunks(draw: st.DrawFn) -> Request:
        req = draw(base)
        req.method = draw(methods)
        if req.method == b"PUT" and draw(st.booleans()):
            location = req.target.split(b"?", 1)[0]
            digest = "sha256:" + hashlib.sha256(req.body).hexdigest()
            req.target = location + f"?digest={digest}".encode()
        return req

    def fresh_upload(req: Request) -> None:
        """`@fresh`: an upload started for this example (the pool's may be finished)."""
        if req.target.startswith(b"@fresh"):
            with target.replica.client() as c:
                location = c.post(f"/v2/{target.base.repo}/blobs/uploads/").headers["location"]
            req.target = location.encode() + req.target[len(b"@fresh") :]

    run_fuzz(target, chunks(), examples=600, prepare=fresh_upload)
