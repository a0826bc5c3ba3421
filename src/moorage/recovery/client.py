"""The admin API of a running cluster, as the command line reaches it.

`--existing` may list several replicas; each call tries them in turn, so commands work
while some replicas are down.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from moorage.errors import MoorageError
from moorage.oci import mediatypes as mt

#: What a manifest is fetched as: whatever type it has.
ALL_MANIFEST_TYPES = ", ".join(sorted(mt.MANIFESTS | mt.INDEXES)) + ", */*"


class ClusterUnreachable(MoorageError):
    """No replica in --existing answered."""


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
        if "://" not in part:
            part = f"http://{part}"
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

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        errors = []
        for url in self.urls:
            try:
                resp = httpx.request(
                    method, f"{url}{path}", json=body, auth=self.auth, timeout=self.timeout
                )
            except httpx.HTTPError as exc:
                errors.append(f"{url}: {exc or type(exc).__name__}")
                continue
            if resp.status_code == 401:
                raise ApiRefused(
                    401,
                    "UNAUTHORIZED",
                    f"{url} refused the credentials: pass --username/--password "
                    "(or MOORAGE_USERNAME/MOORAGE_PASSWORD) of an admin",
                )
            try:
                doc = resp.json()
            except ValueError:
                errors.append(f"{url}: HTTP {resp.status_code}, not a Moorage answer")
                continue
            if resp.status_code == 503:
                errors.append(f"{url}: {doc.get('error', 'unavailable')}")
                continue
            if resp.status_code >= 400:
                raise ApiRefused(
                    resp.status_code, str(doc.get("code", "")), str(doc.get("error", doc))
                )
            return doc
        raise ClusterUnreachable("no replica answered: " + "; ".join(errors))

    def call_retrying(
        self, method: str, path: str, body: dict[str, Any] | None, patience: float
    ) -> Any:
        """Retry while the cluster says BUSY or is briefly unavailable."""
        deadline = time.monotonic() + patience
        delay = 0.5
        while True:
            try:
                return self.call(method, path, body)
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
                self._http = httpx.Client(auth=self.auth, timeout=timeout)
        kind = "manifests" if manifest else "blobs"
        headers = {"Accept": ALL_MANIFEST_TYPES} if manifest else {}
        errors = []
        for url in self.urls:
            with contextlib.ExitStack() as stack:
                path = f"{url}/v2/{repo}/{kind}/{digest}"
                try:
                    resp = stack.enter_context(self._http.stream("GET", path, headers=headers))
                except httpx.TransportError as exc:  # this replica is down: the next one
                    errors.append(f"{url}: {exc or type(exc).__name__}")
                    continue
                yield resp
                return
        raise ClusterUnreachable("no replica answered: " + "; ".join(errors))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
