"""The admin API of a running cluster, as the command line reaches it.

`--existing` may list several replicas; each call tries them in turn, so commands work
while some replicas are down. HTTPS is verified against the system's CAs and the cluster CAs
this process trusts (`moorage.pki.trust`: `--ca-file`, a `--data-dir`'s D/tls/ca.crt); never
skipped. `fetch_ca` is the one unverified exchange (first contact), and it says so.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from moorage.config import is_loopback
from moorage.errors import MoorageError
from moorage.oci import mediatypes as mt
from moorage.pki.trust import client_context, context_for

CA_PATH = "/api/v0/cluster/ca"
UNTRUSTED_HINT = (
    "the replica's HTTPS certificate is not trusted: pass the cluster CA with --ca-file FILE "
    "(or MOORAGE_CA_FILE); 'moorage ca export --data-dir D' on a replica's host writes it, "
    "'moorage ca export --existing URL --ca-fingerprint sha256:...' fetches and pins it"
)


def _describe(url: str, exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLCertVerificationError):
        return f"{url}: {text} ({UNTRUSTED_HINT})"
    return f"{url}: {text}"


#: What a manifest is fetched as: whatever type it has.
ALL_MANIFEST_TYPES = ", ".join(sorted(mt.MANIFESTS | mt.INDEXES)) + ", */*"


#: The largest answer of the admin API read (a backup page is far smaller).
MAX_ANSWER = 256 * 1024 * 1024


class BadAnswer(httpx.HTTPError):
    """An answer too large or too slow to be a replica's (handled as a failed request)."""


class Answer(dict[str, Any]):
    """A replica's JSON answer; a field it lacks is a MoorageError that says so (not a
    KeyError traceback in the command that reads it)."""

    def __init__(self, url: str, doc: dict[str, Any]) -> None:
        super().__init__(doc)
        self.url = url

    def __missing__(self, key: str) -> Any:
        raise MissingField(
            f"{self.url} answered without {key!r}: not a Moorage replica of this version "
            "(check --existing)"
        )


class MissingField(MoorageError, KeyError):
    """A field a replica's answer lacks (a KeyError too, for code that expects one)."""

    def __str__(self) -> str:
        return self.message


class ClusterUnreachable(MoorageError):
    """No replica in --existing answered; `answers` holds what each one said instead."""

    def __init__(self, message: str, answers: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.answers = list(answers)


def _unreachable(errors: Sequence[str]) -> ClusterUnreachable:
    return ClusterUnreachable("no replica answered: " + "; ".join(errors), errors)


#: Methods a replica may be sent again after a failure (RFC 9110: doing them twice is doing
#: them once); a POST is sent again only when it certainly did not leave.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Failures before any byte of the request was sent (no connection, or its TLS handshake
#: failed): the replica never saw it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class OutcomeUnknown(MoorageError):
    """A request that is not safe to send twice may have reached a replica, which gave no
    answer (it timed out, or the connection broke after sending): it was not sent to
    another replica; whether it took effect (or still runs there) is unknown."""


def _outcome_unknown(method: str, path: str, why: str, check: str) -> OutcomeUnknown:
    return OutcomeUnknown(
        f"no answer to {method} {path} ({why}): the replica may have received it and may "
        "still be carrying it out, so it was NOT sent to another replica (doing it twice is "
        "not safe). Its outcome is unknown: "
        + (check or "check the cluster's state (e.g. 'moorage audit --since 1h') before retrying")
    )


class ApiRefused(MoorageError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def split_urls(existing: str) -> list[str]:
    urls = []
    for part in existing.split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        if "://" not in part:  # as the replica serves: HTTPS unless on loopback
            host = part.rpartition(":")[0] if ":" in part else part
            scheme = "http" if is_loopback(host.strip("[]")) else "https"
            part = f"{scheme}://{part}"
        urls.append(part)
    if not urls:
        raise MoorageError("--existing needs at least one URL, e.g. http://127.0.0.1:5000")
    return urls


class AdminClient:
    def __init__(self, urls: list[str], username: str, password: str, timeout: float = 180) -> None:
        self.urls = urls
        self.auth = (username, password)
        self.timeout = timeout
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        idempotent: bool | None = None,
        read_timeout: float | None = None,
        if_unknown: str = "",
    ) -> Any:
        """The answer of the first replica that gives one. A failure moves on to the next
        replica only when sending the request again is safe: it did not leave (no
        connection), or it is `idempotent` (by default: GET, HEAD, PUT, DELETE, OPTIONS).
        Otherwise OutcomeUnknown, whose message ends with `if_unknown` (how to check)."""
        safe = method.upper() in IDEMPOTENT if idempotent is None else idempotent
        timeout = httpx.Timeout(self.timeout, read=read_timeout or self.timeout)
        errors = []
        for url in self.urls:
            try:
                resp, data = self._request(method, f"{url}{path}", body, timeout)
            except httpx.HTTPError as exc:
                if not safe and not isinstance(exc, NOT_SENT):
                    raise _outcome_unknown(method, path, _describe(url, exc), if_unknown) from exc
                errors.append(_describe(url, exc))
                continue
            if resp.status_code == 401:
                raise self.unauthorized(url, resp)
            try:
                doc = json.loads(data)
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, RecursionError):
                answer = f"{url}: HTTP {resp.status_code}, not a Moorage answer"
                if not safe and resp.status_code in (502, 504):  # a proxy's: it may have passed
                    raise _outcome_unknown(method, path, answer, if_unknown) from None
                errors.append(answer)
                continue
            if resp.status_code == 503:
                errors.append(f"{url}: {doc.get('error', 'unavailable')}")
                continue
            if resp.status_code >= 400:
                raise ApiRefused(
                    resp.status_code, str(doc.get("code", "")), str(doc.get("error", doc))[:2000]
                )
            return Answer(url, doc)
        raise _unreachable(errors)

    def _request(
        self, method: str, url: str, body: dict[str, Any] | None, timeout: httpx.Timeout
    ) -> tuple[httpx.Response, bytes]:
        """One request and its answer's body: at most MAX_ANSWER bytes, all of it within
        twice the call's read timeout (a replica trickling its answer a byte at a time, or
        answering gigabytes, is an error, never a hang or the host's memory)."""
        deadline = time.monotonic() + 2 * (timeout.read or self.timeout)
        with httpx.stream(
            method, url, json=body, auth=self.http_auth(), timeout=timeout, verify=context_for(url)
        ) as resp:
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise BadAnswer(f"{url} answered more than {MAX_ANSWER} bytes")
                if time.monotonic() > deadline:
                    raise BadAnswer(f"{url} did not finish its answer in time")
                chunks.append(chunk)
        data = b"".join(chunks)
        skip = ("content-encoding", "content-length", "transfer-encoding")  # of the raw body
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in skip]
        # A response whose body is read (for `unauthorized`, which may look at it).
        return httpx.Response(resp.status_code, headers=headers, content=data), data

    def http_auth(self) -> Any:
        """What authenticates each call (httpx `auth`); a join-token client sends its token."""
        return self.auth

    def unauthorized(self, url: str, resp: httpx.Response) -> ApiRefused:
        return ApiRefused(
            401,
            "UNAUTHORIZED",
            f"{url} refused the credentials: pass --username/--password "
            "(or MOORAGE_USERNAME/MOORAGE_PASSWORD) of an admin",
        )

    def call_retrying(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        patience: float,
        idempotent: bool | None = None,
    ) -> Any:
        """Retry while the cluster says BUSY or is briefly unavailable."""
        deadline = time.monotonic() + patience
        delay = 0.5
        while True:
            try:
                return self.call(method, path, body, idempotent=idempotent)
            except ApiRefused as exc:
                if exc.code != "BUSY" or time.monotonic() + delay > deadline:
                    raise
            except ClusterUnreachable:
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    # -- the registry API (/v2), for what is read by digest (backups) ------------------------
    @contextlib.contextmanager
    def fetch(
        self, repo: str, digest: str, manifest: bool = False, timeout: float = 300
    ) -> Iterator[httpx.Response]:
        """A blob (or a manifest, in whatever media type it has) of `repo` by digest, as a
        streamed response from the first replica that answers; the caller checks the
        status. One connection pool for every call (thread-safe)."""
        with self._http_lock:
            if self._http is None:
                verify = context_for(*self.urls)
                self._http = httpx.Client(auth=self.auth, timeout=timeout, verify=verify)
        kind = "manifests" if manifest else "blobs"
        headers = {"Accept": ALL_MANIFEST_TYPES} if manifest else {}
        errors = []
        for url in self.urls:
            with contextlib.ExitStack() as stack:
                path = f"{url}/v2/{repo}/{kind}/{digest}"
                try:
                    resp = stack.enter_context(self._http.stream("GET", path, headers=headers))
                except httpx.TransportError as exc:  # this replica is down: the next one
                    errors.append(_describe(url, exc))
                    continue
                yield resp
                return
        raise _unreachable(errors)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


@dataclass(frozen=True)
class FetchedCa:
    pem: bytes
    fingerprint: str
    url: str
    #: How the answer was authenticated: "pinned" (--ca-fingerprint matched), "verified"
    #: (the HTTPS certificate chained to a CA this process already trusts), or "unverified".
    trust: str
    #: The replica's HTTPS certificate chains to this CA (None over plain HTTP).
    serves_cluster_cert: bool | None


def _get_ca(url: str, verify: ssl.SSLContext | bool) -> bytes:
    resp = httpx.get(f"{url}{CA_PATH}", timeout=30, verify=verify)
    if resp.status_code != 200:
        raise MoorageError(f"{url}{CA_PATH} answered HTTP {resp.status_code}: {resp.text[:200]}")
    return resp.content


def fetch_ca(urls: list[str], expected: str | None = None) -> FetchedCa:
    """The cluster CA certificate from the first replica that answers `GET /api/v0/cluster/ca`.

    First contact: the answer is fetched over a verified connection when this process already
    trusts the replica's certificate; otherwise over an UNVERIFIED one, and then it is only as
    good as the `expected` fingerprint (`sha256:...`), which it must match (pinning, as
    `kubeadm join --discovery-token-ca-cert-hash` does). The caller reports `trust`."""
    from moorage.pki.ca import fingerprint, load_cert  # cryptography: only here

    errors = []
    for url in urls:
        try:
            try:
                pem = _get_ca(url, client_context())
                trust = "verified" if url.startswith("https://") else "unverified"
            except httpx.ConnectError as exc:
                if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
                    raise
                unverified = ssl.create_default_context()
                unverified.check_hostname = False
                unverified.verify_mode = ssl.CERT_NONE
                pem, trust = _get_ca(url, unverified), "unverified"
        except httpx.HTTPError as exc:
            errors.append(_describe(url, exc))
            continue
        try:
            cert = load_cert(pem)
        except ValueError:
            raise MoorageError(f"{url}{CA_PATH} did not answer a PEM certificate") from None
        found = fingerprint(cert)
        if expected is not None:
            if found != expected.strip().lower():
                raise MoorageError(
                    f"{url} presented CA {found}, not the expected {expected}: refusing it "
                    "(the wrong cluster, or someone in between)"
                )
            trust = "pinned"
        serves: bool | None = None
        if url.startswith("https://"):
            only_ca = ssl.create_default_context(cadata=pem.decode())
            only_ca.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                httpx.get(f"{url}/_ping", timeout=30, verify=only_ca)
                serves = True
            except httpx.HTTPError:
                serves = False
        return FetchedCa(pem, found, url, trust, serves)
    raise _unreachable(errors)
