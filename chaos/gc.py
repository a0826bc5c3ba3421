"""The `gc` scenario's churn: tags deleted and garbage collected continuously under load.

While the pushers push images that share base layers (blobs HEADed, mounted or uploaded the
way docker pushes them), a deleter removes acknowledged images (by tag or by digest) and a
collector runs one collection after another (grace 0 or 2 s, with and without `--untagged`)
on every replica in turn. The fault SIGKILLs the replica running a collection in the middle
of it, then another replica.

At the end: every acknowledged image that was not deleted pulls byte-identical (the common
verifier), every acknowledged delete stays deleted, and after one last collection
(`--grace 0 --untagged`) blob storage (a directory or an S3 prefix, listed through its
driver) holds exactly the blobs the tagged manifests reference
(and their manifests): nothing unreferenced is left, nothing referenced is missing.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from harness.process import AUTH

from chaos.images import OCI_MANIFEST, sha256
from chaos.load import Ack, Load
from moorage.storage import open_blob_storage

#: The collections the collector cycles through: (grace in seconds, --untagged).
COLLECTIONS = ((0.0, False), (0.0, True), (2.0, False), (2.0, True))
#: Base layers the images share.
SHARED_LAYERS = 4
#: At most this share of the acknowledged pushes is deleted.
DELETE_SHARE = 0.5


@dataclass
class Counts:
    deletes: int = 0  # acknowledged (202)
    deletes_unknown: int = 0  # no answer: maybe deleted (neither verified nor checked)
    collections: int = 0  # finished
    collections_interrupted: int = 0  # no answer (the replica was killed) or it failed
    busy: int = 0  # 423: another collection held the lock
    blobs_freed: int = 0
    bytes_freed: int = 0
    manifests_collected: int = 0
    rescued: int = 0
    kills: int = 0
    killed_collections: list[str] = field(default_factory=list)  # the phase each was in
    failures: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        doc["failures"] = dict(self.failures)
        return doc


class Churn:
    """The deleter and collector threads of the `gc` scenario."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.counts = Counts()
        self.deleted: dict[str, str] = {}  # ref -> how ("tag" or "digest")
        self.unknown: set[str] = set()  # refs whose delete got no answer
        self.problems: list[str] = []
        self._targets: list[str] = []
        self._trust: ssl.SSLContext | bool = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def set_targets(self, urls: list[str], trust: ssl.SSLContext | bool = True) -> None:
        with self._lock:
            self._targets, self._trust = list(urls), trust

    def _target(self) -> tuple[str, ssl.SSLContext | bool] | None:
        with self._lock:
            return (random.choice(self._targets), self._trust) if self._targets else None

    def start(self) -> None:
        for fn in (self._deleter, self._collector):
            t = threading.Thread(target=fn, name=f"churn-{fn.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)
        self._threads = []

    def excluded(self) -> set[str]:
        """The refs not to verify: deleted, or maybe deleted."""
        with self._lock:
            return set(self.deleted) | self.unknown

    def _fail(self, kind: str, detail: str) -> None:
        with self._lock:
            self.counts.failures[kind] += 1
            self.counts.samples.setdefault(kind, detail[:300])

    # -- the deleter --------------------------------------------------------------------
    def _deleter(self) -> None:
        done: set[str] = set()
        while not self._stop.is_set():
            acks = list(self.load.acks)
            live = [a for a in acks if a.ref not in done]
            target = self._target()
            if target is None or not live or len(done) >= DELETE_SHARE * len(acks):
                time.sleep(0.05)
                continue
            ack = random.choice(live)
            done.add(ack.ref)
            by_tag = random.random() < 0.5
            ref = ack.tag if by_tag else ack.digest
            try:
                with httpx.Client(base_url=target[0], auth=AUTH, timeout=10, verify=target[1]) as c:
                    r = c.delete(f"/v2/{ack.repo}/manifests/{ref}")
            except httpx.HTTPError as exc:
                with self._lock:
                    self.unknown.add(ack.ref)
                    self.counts.deletes_unknown += 1
                self._fail("delete: no answer", repr(exc))
                continue
            if r.status_code == 202:
                with self._lock:
                    self.deleted[ack.ref] = "tag" if by_tag else "digest"
                    self.counts.deletes += 1
            elif r.status_code == 404:
                self.problems.append(f"{ack.ref}: acknowledged, but its delete answered 404")
            else:  # refused (5xx while a replica dies): the image stays and is verified
                self._fail(f"delete: HTTP {r.status_code}", r.text)

    # -- the collector --------------------------------------------------------------------
    def _collector(self) -> None:
        for i in _forever():
            if self._stop.is_set():
                return
            target = self._target()
            if target is None:
                time.sleep(0.1)
                continue
            grace, untagged = COLLECTIONS[i % len(COLLECTIONS)]
            body = {"grace": grace, "untagged": untagged}
            try:
                with httpx.Client(
                    base_url=target[0], auth=AUTH, timeout=120, verify=target[1]
                ) as c:
                    r = c.post("/api/v0/gc", json=body)
            except httpx.HTTPError as exc:
                self.counts.collections_interrupted += 1
                self._fail("collection: no answer", repr(exc))
                time.sleep(0.2)
                continue
            if r.status_code == 423:
                self.counts.busy += 1
                time.sleep(0.5)
            elif r.status_code == 200:
                self.record(r.json())
            else:
                self.counts.collections_interrupted += 1
                self._fail(f"collection: HTTP {r.status_code}", r.text)
                time.sleep(0.2)

    def record(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self.counts.collections += 1
            self.counts.blobs_freed += int(doc.get("blobs", 0))
            self.counts.bytes_freed += int(doc.get("bytes", 0))
            self.counts.manifests_collected += int(doc.get("manifests", 0))
            self.counts.rescued += int(doc.get("rescued", 0))


def _forever() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


def collect(
    url: str, trust: ssl.SSLContext | bool, body: dict[str, Any], patience: float = 90
) -> Any:
    """One collection through `url`, waiting while another holds the lock (a killed run's
    lock lasts until its lease ends); its result."""
    deadline = time.monotonic() + patience
    with httpx.Client(base_url=url, auth=AUTH, timeout=120, verify=trust) as c:
        while True:
            r = c.post("/api/v0/gc", json=body)
            if r.status_code == 200:
                return r.json()
            if r.status_code != 423 or time.monotonic() > deadline:
                raise RuntimeError(f"collection through {url}: HTTP {r.status_code} {r.text[:300]}")
            time.sleep(0.5)


def start_and_kill(url: str, trust: ssl.SSLContext | bool, patience: float = 60) -> str:
    """Start a collection on the replica at `url` (without waiting for it) once no other
    runs; return once it has run a random 0-0.25 s, saying how far it got. The caller kills
    the replica."""
    deadline = time.monotonic() + patience
    with httpx.Client(base_url=url, auth=AUTH, timeout=30, verify=trust) as c:
        while True:
            r = c.post("/api/v0/gc", json={"grace": 0, "untagged": True, "wait": False})
            if r.status_code == 200:
                run = r.json()["run"]
                break
            if r.status_code != 423 or time.monotonic() > deadline:
                raise RuntimeError(f"could not start a collection: HTTP {r.status_code} {r.text}")
            time.sleep(0.1)
        delay = random.uniform(0, 0.25)
        time.sleep(delay)
        doc = c.get("/api/v0/gc").json()
    if (doc.get("last") or {}).get("run") == run:
        return f"finished within {delay:.2f} s"
    return f"{(doc.get('running') or {}).get('phase', '?')} after {delay:.2f} s"


# -- the final check ------------------------------------------------------------------------


def tagged_references(url: str, trust: ssl.SSLContext | bool) -> tuple[set[str], list[str]]:
    """Every digest a tagged manifest needs (its own and what it names), read through the
    API; and any tag that does not pull."""
    needed: set[str] = set()
    problems: list[str] = []
    with httpx.Client(base_url=url, auth=AUTH, timeout=30, verify=trust) as c:
        for repo in _paged(c, "/v2/_catalog?n=1000", "repositories"):
            for tag in _paged(c, f"/v2/{repo}/tags/list?n=1000", "tags"):
                r = c.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
                if r.status_code != 200:
                    problems.append(f"{repo}:{tag} is listed but answers {r.status_code}")
                    continue
                doc = json.loads(r.content)
                needed.add(sha256(r.content))
                needed.add(doc["config"]["digest"])
                needed.update(layer["digest"] for layer in doc["layers"])
    return needed, problems


def _paged(c: httpx.Client, path: str | None, field_name: str) -> Iterator[str]:
    while path:
        r = c.get(path)
        if r.status_code == 404:
            return
        r.raise_for_status()
        yield from r.json().get(field_name) or []
        nxt = r.links.get("next", {}).get("url")
        path = str(nxt) if nxt else None


def stored_blobs(storage: str) -> set[str]:
    """The digest of every blob in blob storage, listed through its driver (the cluster's
    `--storage` value: a directory, or an S3 location whose credentials are in the
    environment), as garbage collection lists it."""

    async def listing() -> set[str]:
        driver = open_blob_storage(storage)
        try:
            return {digest async for page in driver.blobs() for digest, _, _ in page}
        finally:
            await driver.close()

    return asyncio.run(listing())


def final_check(
    churn: Churn, acks: list[Ack], url: str, trust: ssl.SSLContext | bool, storage: str
) -> tuple[dict[str, Any], list[str]]:
    """The last collection, then storage against what the tagged manifests reference, and
    every acknowledged delete still deleted. (the last collection's result, problems)"""
    last = collect(url, trust, {"grace": 0, "untagged": True})
    problems = list(churn.problems)
    needed, problems_pull = tagged_references(url, trust)
    problems += problems_pull
    stored = stored_blobs(storage)
    if stored - needed:
        # Pushes the churn gave up on (no answer in time) may still commit on the server
        # after the collection's mark or even after it ended: the collection keeps what
        # they link (rescued) or never saw it. Once they are over, the next one frees it.
        time.sleep(2.0)
        last = collect(url, trust, {"grace": 0, "untagged": True})
        last["collections_at_the_end"] = 2
        needed, problems_pull = tagged_references(url, trust)
        stored = stored_blobs(storage)
    problems += [
        f"blob {d}: no tagged manifest references it, yet it is stored"
        for d in sorted(stored - needed)
    ]
    problems += [
        f"blob {d}: a tagged manifest references it, yet it is not stored"
        for d in sorted(needed - stored)
    ]
    by_ref = {a.ref: a for a in acks}
    with httpx.Client(base_url=url, auth=AUTH, timeout=30, verify=trust) as c:
        for ref, how in sorted(churn.deleted.items()):
            a = by_ref[ref]
            r = c.get(f"/v2/{a.repo}/manifests/{a.tag}", headers={"Accept": OCI_MANIFEST})
            if r.status_code != 404:
                problems.append(f"{ref}: deleted (by {how}), yet it answers {r.status_code}")
    last["stored_blobs"] = len(stored)
    return last, problems
