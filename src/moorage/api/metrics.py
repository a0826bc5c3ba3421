"""`/metrics` in Prometheus text format.

Every API worker records into prometheus_client's multiprocess directory (set by the
replica supervisor), so one scrape sees the whole replica. Every label value comes from a
fixed set, whatever a client sends: routes are classes (never repository names), methods
outside the HTTP methods the API knows are "other", unusual status codes count by class.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moorage.errors import MoorageError
from moorage.meta import usage
from moorage.registry.gc import GcResult
from moorage.storage.journal_trim import TrimResult

REQUESTS = Counter("moorage_http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "moorage_http_request_duration_seconds",
    "Time to answer an HTTP request (until the response is complete)",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BYTES_IN = Counter("moorage_http_received_bytes_total", "Request body bytes", ["route"])
BYTES_OUT = Counter("moorage_http_sent_bytes_total", "Response body bytes", ["route"])
ETCD_HEALTHY = Gauge(
    "moorage_etcd_healthy", "1 when this replica's etcd is healthy", multiprocess_mode="livemax"
)
STORAGE_HEALTHY = Gauge(
    "moorage_storage_healthy",
    "1 when blob storage passes its write/read probe",
    multiprocess_mode="livemax",
)
ROLE = Gauge(
    "moorage_replica_role",
    "1 for this replica's etcd role (leader, follower, learner or unknown)",
    ["role"],
    multiprocess_mode="livemax",
)
ROLES = ("leader", "follower", "learner", "unknown")
GC_RUNS = Counter(
    "moorage_gc_runs_total",
    "Garbage collections this replica ran, by result (ok, dry_run, failed)",
    ["result"],
)
GC_BLOBS = Counter("moorage_gc_blobs_deleted_total", "Blobs garbage collection deleted")
GC_BYTES = Counter("moorage_gc_bytes_freed_total", "Bytes garbage collection freed")
GC_MANIFESTS = Counter(
    "moorage_gc_manifests_deleted_total", "Untagged manifests garbage collection deleted"
)
GC_DURATION = Histogram(
    "moorage_gc_duration_seconds",
    "How long a garbage collection took",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
)
JOURNAL_FILES = Gauge(
    "moorage_journal_files",
    "Journal files (segments or S3 objects) left after the last trim round this replica ran",
    multiprocess_mode="mostrecent",
)
JOURNAL_TRIMMED = Counter(
    "moorage_journal_trimmed_files_total", "Journal files the trim rounds of this replica deleted"
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUSES = frozenset(
    {200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 409, 413}
    | {416, 423, 500, 501, 503}
)


def method_label(method: object) -> str:
    return method if isinstance(method, str) and method in METHODS else "other"


def status_label(status: int) -> str:
    """The status itself when it is one the API answers, else its class (`4xx`)."""
    if status in STATUSES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def route_class(path: str) -> str:
    if path in ("/v2", "/v2/"):
        return "base"
    if path.startswith("/v2/"):
        if "/blobs/uploads" in path:
            return "upload"
        for part, name in (
            ("/blobs/", "blob"),
            ("/manifests/", "manifest"),
            ("/tags/list", "tags"),
            ("/referrers/", "referrers"),
        ):
            if part in path:
                return name
        return "catalog" if path.startswith("/v2/_catalog") else "other"
    for prefix, name in (
        ("/_ping", "ping"),
        ("/api/v0/health", "health"),
        ("/api/v0/cluster", "cluster"),
        ("/api/v0/gc", "gc"),
        ("/metrics", "metrics"),
    ):
        if path.startswith(prefix):
            return name
    return "other"


def set_health(etcd: bool, storage: bool, role: str) -> None:
    ETCD_HEALTHY.set(1 if etcd else 0)
    STORAGE_HEALTHY.set(1 if storage else 0)
    for r in ROLES:
        ROLE.labels(r).set(1 if r == role else 0)


def observe_gc(result: GcResult | None, duration: float) -> None:
    """A finished collection (None: it failed)."""
    GC_DURATION.observe(duration)
    if result is None:
        GC_RUNS.labels("failed").inc()
        return
    GC_RUNS.labels("dry_run" if result.dry_run else "ok").inc()
    if not result.dry_run:
        GC_BLOBS.inc(result.blobs)
        GC_BYTES.inc(result.bytes)
        GC_MANIFESTS.inc(result.manifests)


def observe_trim(result: TrimResult) -> None:
    """A finished journal trim round."""
    JOURNAL_FILES.set(result.kept + result.skipped_recent)
    JOURNAL_TRIMMED.inc(result.deleted)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_class(scope["path"])
        method = method_label(scope["method"])
        started = time.perf_counter()
        status = 500
        sent = 0
        received = 0
        length_known = False

        # Request bytes: the declared length when there is one (no per-chunk wrapper).
        declared = next(
            (
                int(v)
                for k, v in scope["headers"]
                if k == b"content-length" and v.isdigit() and len(v) <= 18
            ),
            None,
        )

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent, length_known
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-length":
                        length_known = True
                        sent = 0 if method == "HEAD" or not value.isdigit() else int(value)
            elif kind == "http.response.body" and not length_known:
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(
                scope, receive if declared is not None else counting_receive, counting_send
            )
        finally:
            if declared is not None:
                received = declared
            REQUESTS.labels(route, method, status_label(status)).inc()
            LATENCY.labels(route, method).observe(time.perf_counter() - started)
            if received:
                BYTES_IN.labels(route).inc(received)
            if sent:
                BYTES_OUT.labels(route).inc(sent)


async def metrics(request: Request) -> Response:
    registry: Any
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY as registry
    text = generate_latest(registry) + _tag_cache_lines(request) + await _usage_lines(request)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


def _tag_cache_lines(request: Request) -> bytes:
    """The tag cache (meta/tag_cache.py) of the API worker answering this scrape."""
    st = getattr(request.app.state, "moorage", None)
    tags = st.registry.manifests.tags if st is not None else None
    if tags is None:
        return b""
    return (
        "# HELP moorage_tag_cache_serving 1 while this worker's tag cache serves\n"
        "# TYPE moorage_tag_cache_serving gauge\n"
        f"moorage_tag_cache_serving {int(tags.serving)}\n"
        "# HELP moorage_tag_cache_hits_total Tags this worker answered from its cache\n"
        "# TYPE moorage_tag_cache_hits_total counter\n"
        f"moorage_tag_cache_hits_total {tags.hits}\n"
        "# HELP moorage_tag_cache_misses_total Tags this worker read from the store\n"
        "# TYPE moorage_tag_cache_misses_total counter\n"
        f"moorage_tag_cache_misses_total {tags.misses}\n"
    ).encode()


#: Namespaces whose usage a scrape reports at most (those with a policy, in name order).
MAX_USAGE_NAMESPACES = 1000


#: A scrape reuses the usage lines read this recently by the same worker: `/metrics` needs
#: no credentials, and each reading costs a store read per namespace (up to 1,000).
USAGE_SECONDS = 1.0


def _now() -> float:
    return time.monotonic()


async def _usage_lines(request: Request) -> bytes:
    """Storage used (and the quota) of each namespace that has a policy, read from the store
    (the counter of meta/usage.py; the label set is the operator's namespaces, never a
    client's input) at most once per `USAGE_SECONDS` per worker: concurrent scrapes share
    one reading. Nothing when the store does not answer."""
    st = getattr(request.app.state, "moorage", None)
    if st is None:
        return b""
    state = request.app.state
    lock = getattr(state, "usage_lines_lock", None)
    if lock is None:
        lock = state.usage_lines_lock = asyncio.Lock()
    async with lock:
        kept: tuple[float, bytes] | None = getattr(state, "usage_lines", None)
        if kept is not None and _now() - kept[0] < USAGE_SECONDS:
            return kept[1]
        text = await _read_usage_lines(st)
        state.usage_lines = (_now(), text)
        return text


async def _read_usage_lines(st: Any) -> bytes:
    try:
        policies = st.registry.manifests.policies
        records, _ = await policies.page(MAX_USAGE_NAMESPACES, None)
        namespaces = {r.target: r.quota for r in records if "/" not in r.target}
        lines = [
            "# HELP moorage_namespace_usage_bytes Storage a namespace uses (each blob once)",
            "# TYPE moorage_namespace_usage_bytes gauge",
        ]
        quotas = [
            "# HELP moorage_namespace_quota_bytes The storage quota of a namespace",
            "# TYPE moorage_namespace_quota_bytes gauge",
        ]
        for ns, quota in sorted(namespaces.items()):
            used = await usage.current(st.registry.meta, ns)
            lines.append(f'moorage_namespace_usage_bytes{{namespace="{ns}"}} {used.bytes}')
            if quota is not None:
                quotas.append(f'moorage_namespace_quota_bytes{{namespace="{ns}"}} {quota}')
    except MoorageError:
        return b""
    return ("\n".join([*lines, *quotas]) + "\n").encode()
