"""Concurrent pushers that record every acknowledged push, and the verifier that pulls them."""

from __future__ import annotations

import contextlib
import itertools
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from harness.process import AUTH

from chaos.images import PushRefused, base_layer, make_image, push, verify


@dataclass(frozen=True)
class Ack:
    """A push the registry acknowledged: its manifest PUT answered 201."""

    repo: str
    tag: str
    digest: str
    blobs: tuple[str, ...]
    via: str  # the replica URL that acknowledged it
    phase: str  # what the harness was doing at the time (before, fault, after)
    started: float  # time.monotonic() when the push began
    finished: float  # ... and when its manifest PUT was answered

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"


class Load:
    """`workers` threads pushing small images, each to a unique repo:tag, round-robin over
    the current targets, until stopped. With `shared` > 0 every image also has one of
    `shared` base layers, and blobs are pushed the way docker does (HEAD, mount from the
    next worker's repository, upload)."""

    def __init__(
        self,
        name: str,
        workers: int = 4,
        timeout: float = 10.0,
        layer_size: int = 2048,
        shared: int = 0,
    ) -> None:
        self.name = name
        self.workers = workers
        self.timeout = timeout
        self.layer_size = layer_size
        self.bases = [base_layer(i) for i in range(shared)]
        self.phase = "before"
        self.acks: list[Ack] = []
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.samples: dict[str, str] = {}  # kind -> the first server error of that kind
        self._targets: list[str] = []
        self._trust: ssl.SSLContext | bool = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rr = itertools.count()

    def set_targets(self, urls: list[str], trust: ssl.SSLContext | bool = True) -> None:
        """Push to `urls` from now on; HTTPS verified with `trust` (the cluster CA)."""
        with self._lock:
            self._targets = list(urls)
            self._trust = trust

    def _next_target(self) -> tuple[str, ssl.SSLContext | bool] | None:
        with self._lock:
            if not self._targets:
                return None
            return self._targets[next(self._rr) % len(self._targets)], self._trust

    def start(self) -> None:
        for w in range(self.workers):
            t = threading.Thread(target=self._worker, args=(w,), name=f"pusher-{w}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout * 4 + 30)
        self._threads = []

    def repo(self, worker: int) -> str:
        return f"chaos/{self.name}/w{worker}"

    def by_phase(self) -> dict[str, int]:
        return dict(Counter(a.phase for a in self.acks))

    def _worker(self, w: int) -> None:
        clients: dict[str, httpx.Client] = {}
        try:
            for seq in itertools.count():
                if self._stop.is_set():
                    return
                target = self._next_target()
                if target is None:
                    time.sleep(0.1)
                    continue
                url, trust = target
                client = clients.get(url)
                if client is None:
                    client = clients[url] = httpx.Client(
                        base_url=url, auth=AUTH, timeout=self.timeout, verify=trust
                    )
                repo, tag = self.repo(w), f"p{seq}"
                base = self.bases[seq % len(self.bases)] if self.bases else None
                seed = f"{self.name}/{w}/{seq}/{time.time_ns()}"
                image = make_image(seed, self.layer_size, base)
                mount_from = self.repo((w + 1) % self.workers) if self.bases else None
                phase = self.phase
                started = time.monotonic()
                with self._lock:
                    self.attempts += 1
                try:
                    digest = push(client, repo, tag, image, mount_from)
                except PushRefused as exc:
                    self._fail(f"HTTP {exc.status}", f"{url} {exc}")
                    continue
                except httpx.HTTPError as exc:
                    self._fail(f"no answer ({type(exc).__name__})")
                    with contextlib.suppress(Exception):
                        client.close()
                    clients.pop(url, None)
                    continue
                except Exception as exc:  # never let a pusher thread die silently
                    self._fail(f"error ({type(exc).__name__})", f"{url} {exc!r}")
                    continue
                if digest != image.digest:
                    self._fail("acknowledged with a wrong digest")
                ack = Ack(
                    repo, tag, image.digest, image.blob_digests, url, phase, started,
                    time.monotonic(),
                )  # fmt: skip
                with self._lock:
                    self.acks.append(ack)
        finally:
            for c in clients.values():
                with contextlib.suppress(Exception):
                    c.close()

    def _fail(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.failures[kind] += 1
            if detail and kind.startswith(("HTTP", "error")) and kind not in self.samples:
                self.samples[kind] = f"{self.phase}: {detail}"
        time.sleep(0.2)


def verify_all(
    acks: list[Ack], urls: list[str], trust: ssl.SSLContext | bool = True, threads: int = 8
) -> list[str]:
    """Pull every acknowledged image (round-robin over `urls`, retried on the others; HTTPS
    verified with `trust`) and check every digest; one line per image not verified."""
    if not urls:
        return [f"{a.ref}: no healthy replica to pull from" for a in acks]
    local = threading.local()
    made: list[httpx.Client] = []

    def client(url: str) -> httpx.Client:
        pool: dict[str, httpx.Client] = local.__dict__.setdefault("pool", {})
        if url not in pool:
            pool[url] = httpx.Client(base_url=url, auth=AUTH, timeout=30, verify=trust)
            made.append(pool[url])
        return pool[url]

    def check(i_ack: tuple[int, Ack]) -> str:
        i, ack = i_ack
        problems: list[str] = []
        for attempt in range(len(urls) + 1):
            url = urls[(i + attempt) % len(urls)]
            try:
                problem = verify(client(url), ack.repo, ack.tag, ack.digest, ack.blobs)
            except httpx.HTTPError as exc:
                problem = f"no answer: {exc!r}"
            if not problem:
                return ""
            problems.append(f"{problem} (via {url})")
            time.sleep(0.2)
        return (
            f"{ack.ref} (acknowledged by {ack.via} during {ack.phase}): {problems[-1]}; "
            f"{len(problems)} attempts over {len(urls)} replica(s) failed"
        )

    try:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(check, enumerate(acks)))
    finally:
        for c in made:
            c.close()
    return [r for r in results if r]


def missing_tags(acks: list[Ack], url: str, trust: ssl.SSLContext | bool = True) -> list[Ack]:
    """The acknowledged pushes whose tag the replica at `url` does not list (tag lists come
    from the store alone, so this works on a read-only replica and without blob bytes)."""
    by_repo: dict[str, set[str]] = {}
    for a in acks:
        by_repo.setdefault(a.repo, set())
    with httpx.Client(base_url=url, auth=AUTH, timeout=30, verify=trust) as c:
        for repo, tags in by_repo.items():
            path: str | None = f"/v2/{repo}/tags/list?n=1000"
            while path:
                r = c.get(path)
                if r.status_code == 404:
                    break
                r.raise_for_status()
                tags.update(r.json().get("tags") or [])
                nxt = r.links.get("next", {}).get("url")
                path = str(nxt) if nxt else None
    return [a for a in acks if a.tag not in by_repo[a.repo]]
