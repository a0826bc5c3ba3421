"""`make bench-scale`: every operation on a registry of 100,000+ tags, timed.

A 3-replica cluster (bench.cluster: `moorage install` + `join`, one etcd member each,
shared blob storage) is filled through the API: `--tags` tags spread over `--repos`
repositories (one small config and layer blob per repository, one small unique manifest
per tag), one repository with `--big-tags` tags, and in it one manifest that
`--alias-tags` tags point at. Then, each timed and checked:

- the first catalog page (n=1000) and the first tag page of a small repository, measured
  at several fill levels (paged reads must stay flat as the registry grows);
- a full catalog walk with n=1000, the catalog without `n` (capped, followed by `Link`);
- the big repository's tag list, paged (n=1000) and without `n`;
- delete by digest of the manifest with `--alias-tags` tags;
- `moorage status`, `moorage backup` and `backup verify`;
- `moorage emergency-repair` on one replica after SIGKILL of the two others, then the
  repaired replica's catalog and big tag list are counted;
- `moorage restore` of the backup into a new replica (the repaired one stopped first),
  then counted again;
- the etcd database size.

Usage: python -m bench.scale [--tags N] [--repos N] [--big-tags N] [--alias-tags N]
(`make bench-scale BENCH_SCALE_ARGS="--tags 2000 --repos 200"` for a quick run). Writes
bench/results/scale.md and scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.process import REPO_ROOT, CommandFailed

from bench._http import Connection, HttpError
from bench.cluster import AUTHORIZATION, Cluster, Replica, running
from bench.report import machine_info

CONCURRENCY = 32
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
RESULTS = REPO_ROOT / "bench" / "results"
BIG = "scale/big"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def repo_name(i: int) -> str:
    return f"scale/r{i:05d}"


def blobs_for(repo: str) -> tuple[bytes, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "repo": repo}).encode()
    layer = f"layer of {repo}\n".encode() * 4
    return config, layer


def manifest_for(repo: str, tag: str) -> bytes:
    config, layer = blobs_for(repo)
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": _digest(layer), "size": len(layer)}],
        "annotations": {"org.example.tag": tag},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Step:
    name: str
    seconds: float | None = None
    ok: bool = False
    detail: str = ""


@dataclass
class Report:
    args: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    flat: list[dict[str, Any]] = field(default_factory=list)  # paged reads per fill level
    etcd_db_bytes: int | None = None
    fill_seconds: float = 0.0
    fill_rate: float = 0.0

    def timed(self, name: str) -> _Timer:
        step = Step(name)
        self.steps.append(step)
        return _Timer(step)


class _Timer:
    def __init__(self, step: Step) -> None:
        self.step = step

    def __enter__(self) -> Step:
        self.start = time.monotonic()
        return self.step

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        self.step.seconds = time.monotonic() - self.start
        if exc is not None:
            self.step.ok = False
            self.step.detail = f"FAILED: {str(exc)[-400:]}"
            _log(f"  {self.step.name}: {self.step.detail}")
            return isinstance(exc, Exception)
        self.step.ok = True
        _log(f"  {self.step.name}: {self.step.seconds:.2f} s {self.step.detail}")
        return False


# -- filling ---------------------------------------------------------------------------


async def _pool(
    urls: list[str],
    auth: str,
    jobs: Iterable[Any],
    work: Callable[[Connection, Any], Awaitable[None]],
) -> int:
    """Run `work` over `jobs` on CONCURRENCY connections spread over `urls`."""
    queue = iter(jobs)
    done = 0

    async def worker(conn: Connection) -> None:
        nonlocal done
        for job in queue:
            for attempt in range(5):
                try:
                    await work(conn, job)
                    break
                except (HttpError, OSError, TimeoutError) as exc:
                    conn.close()
                    if attempt == 4:
                        raise RuntimeError(f"{job}: {exc}") from exc
                    await asyncio.sleep(0.5 * (attempt + 1))
            done += 1

    conns = [Connection(urls[i % len(urls)], auth) for i in range(CONCURRENCY)]
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return done


async def _upload(conn: Connection, repo: str, data: bytes) -> None:
    resp = await conn.request(
        "POST",
        f"/v2/{repo}/blobs/uploads/?digest={_digest(data)}",
        {"Content-Type": "application/octet-stream"},
        data,
    )
    resp.expect(201)


async def _push_repo_blobs(conn: Connection, repo: str) -> None:
    for data in blobs_for(repo):
        await _upload(conn, repo, data)


async def _put_manifest(conn: Connection, job: tuple[str, str, bytes | None]) -> None:
    repo, tag, body = job
    body = body or manifest_for(repo, tag)
    resp = await conn.request(
        "PUT", f"/v2/{repo}/manifests/{tag}", {"Content-Type": MANIFEST}, body
    )
    resp.expect(201)


def _tags_of(first: int, last: int, per_repo: int) -> Iterator[tuple[str, str, None]]:
    """Tags number first..last-1 of the small repositories: tag k is t<k % per_repo>."""
    for k in range(first, last):
        yield repo_name(k // per_repo), f"t{k % per_repo}", None


# -- measuring -------------------------------------------------------------------------


async def _get(conn: Connection, target: str) -> tuple[dict[str, Any], str | None]:
    resp = (await conn.request("GET", target)).expect(200)
    link = resp.headers.get("link")
    nxt = link.split(">", 1)[0].lstrip("<") if link else None
    return json.loads(resp.body), nxt


async def _median_ms(conn: Connection, target: str, times: int = 15) -> float:
    samples = []
    for _ in range(times):
        t = time.monotonic()
        await _get(conn, target)
        samples.append((time.monotonic() - t) * 1000)
    return statistics.median(samples)


async def _walk(conn: Connection, target: str, field_name: str) -> tuple[int, int]:
    """Follow `Link` from `target`: (items, requests)."""
    items = requests = 0
    nxt: str | None = target
    while nxt:
        doc, nxt = await _get(conn, nxt)
        items += len(doc.get(field_name) or [])
        requests += 1
    return items, requests


async def _flat(url: str, auth: str, tags: int, repos: int) -> dict[str, Any]:
    conn = Connection(url, auth)
    try:
        return {
            "tags": tags,
            "repositories": repos,
            "catalog_first_page_ms": await _median_ms(conn, "/v2/_catalog?n=1000"),
            "tags_first_page_ms": await _median_ms(conn, f"/v2/{repo_name(0)}/tags/list?n=100"),
        }
    finally:
        conn.close()


def _db_bytes(replica: Replica) -> int | None:
    found = list((replica.data_dir).glob("**/member/snap/db"))
    return found[0].stat().st_size if found else None


def run(args: argparse.Namespace, root: Path) -> Report:
    report = Report(vars(args).copy())
    per_repo = max(1, args.tags // args.repos)
    total = per_repo * args.repos
    env = {"MOORAGE_LOG_LEVEL": "WARNING"}
    with running(root, "scale", 3, env) as cluster:
        urls = [r.url for r in cluster.replicas]
        auth = AUTHORIZATION
        loop = asyncio.new_event_loop()
        try:
            fill_start = time.monotonic()
            _log(f"  uploading blobs of {args.repos + 1} repositories")
            names = [repo_name(i) for i in range(args.repos)] + [BIG]
            loop.run_until_complete(_pool(urls, auth, names, _push_repo_blobs))
            levels = sorted({x for x in (1000, 10000, total) if x <= total})
            pushed = 0
            for level in levels:
                _log(f"  pushing tags {pushed}..{level}")
                loop.run_until_complete(
                    _pool(urls, auth, _tags_of(pushed, level, per_repo), _put_manifest)
                )
                pushed = level
                flat = loop.run_until_complete(_flat(urls[0], auth, pushed, -(-pushed // per_repo)))
                report.flat.append(flat)
                _log(f"  at {pushed} tags: {flat}")
            _log(f"  pushing {args.big_tags} tags to {BIG}")
            big = ((BIG, f"v{i:05d}", None) for i in range(args.big_tags))
            loop.run_until_complete(_pool(urls, auth, big, _put_manifest))
            alias_body = manifest_for(BIG, "alias")
            _log(f"  pointing {args.alias_tags} tags at one manifest in {BIG}")
            aliases = ((BIG, f"alias{i:05d}", alias_body) for i in range(args.alias_tags))
            loop.run_until_complete(_pool(urls, auth, aliases, _put_manifest))
            report.fill_seconds = time.monotonic() - fill_start
            all_tags = total + args.big_tags + args.alias_tags
            report.fill_rate = all_tags / report.fill_seconds
            flat = loop.run_until_complete(_flat(urls[0], auth, all_tags, args.repos + 1))
            report.flat.append(flat)
            _log(f"  filled in {report.fill_seconds:.0f} s; {flat}")
            loop.run_until_complete(_reads(report, urls[0], auth, args))
            loop.run_until_complete(_delete(report, urls[1], auth, alias_body, args))
            _admin(report, cluster, root, args)
        finally:
            loop.close()
    return report


async def _reads(report: Report, url: str, auth: str, args: argparse.Namespace) -> None:
    conn = Connection(url, auth)
    big_total = args.big_tags + args.alias_tags
    try:
        with report.timed("catalog, first page (n=1000)") as s:
            doc, _ = await _get(conn, "/v2/_catalog?n=1000")
            s.detail = f"{len(doc['repositories'])} repositories"
        with report.timed("catalog, full walk (n=1000)") as s:
            items, reqs = await _walk(conn, "/v2/_catalog?n=1000", "repositories")
            s.detail = f"{items} repositories in {reqs} requests"
            assert items == args.repos + 1, f"expected {args.repos + 1} repositories"
        with report.timed("catalog without n (capped pages, Link followed)") as s:
            items, reqs = await _walk(conn, "/v2/_catalog", "repositories")
            s.detail = f"{items} repositories in {reqs} requests"
            assert items == args.repos + 1
        with report.timed(f"tag list of {BIG}, first page (n=1000)") as s:
            doc, _ = await _get(conn, f"/v2/{BIG}/tags/list?n=1000")
            s.detail = f"{len(doc['tags'])} tags"
        with report.timed(f"tag list of {BIG}, full walk (n=1000)") as s:
            items, reqs = await _walk(conn, f"/v2/{BIG}/tags/list?n=1000", "tags")
            s.detail = f"{items} tags in {reqs} requests"
            assert items == big_total, f"expected {big_total} tags"
        with report.timed(f"tag list of {BIG} without n (capped pages, Link followed)") as s:
            items, reqs = await _walk(conn, f"/v2/{BIG}/tags/list", "tags")
            s.detail = f"{items} tags in {reqs} requests"
            assert items == big_total
    finally:
        conn.close()


async def _delete(
    report: Report, url: str, auth: str, body: bytes, args: argparse.Namespace
) -> None:
    conn = Connection(url, auth)
    try:
        with report.timed(f"delete by digest, manifest with {args.alias_tags} tags") as s:
            resp = await conn.request("DELETE", f"/v2/{BIG}/manifests/{_digest(body)}")
            resp.expect(202)
            items, _ = await _walk(conn, f"/v2/{BIG}/tags/list?n=10000", "tags")
            s.detail = f"{items} tags left"
            assert items == args.big_tags, f"expected {args.big_tags} tags left"
    finally:
        conn.close()


def _count(url: str, args: argparse.Namespace) -> str:
    async def count() -> tuple[int, int]:
        conn = Connection(url, AUTHORIZATION)
        try:
            repos, _ = await _walk(conn, "/v2/_catalog?n=1000", "repositories")
            tags, _ = await _walk(conn, f"/v2/{BIG}/tags/list?n=1000", "tags")
        finally:
            conn.close()
        return repos, tags

    repos, tags = asyncio.run(count())
    if repos != args.repos + 1 or tags != args.big_tags:
        raise RuntimeError(f"found {repos} repositories and {tags} tags in {BIG}: data lost")
    return f"{repos} repositories, {tags} tags in {BIG}: nothing lost"


def _admin(report: Report, cluster: Cluster, root: Path, args: argparse.Namespace) -> None:
    r0, r1, r2 = cluster.replicas
    report.etcd_db_bytes = _db_bytes(r0)
    with report.timed("moorage status (3 replicas)") as s:
        s.detail = f"scenario {cluster.status()['scenario']}"
    archive = root / "scale-backup.tar"
    with report.timed("moorage backup") as s:
        out = json.loads(
            cluster.moorage(
                "backup", "--existing", cluster.urls(), "--out", str(archive), "--json",
                timeout=3600,
            )
        )  # fmt: skip
        s.detail = f"{archive.stat().st_size / 1e6:.1f} MB, counts {out.get('counts')}"
    with report.timed("moorage backup verify") as s:
        cluster.moorage(
            "backup", "verify", str(archive), "--storage", str(cluster.storage), timeout=3600
        )
    with report.timed("emergency-repair after SIGKILL of 2 of 3 replicas") as s:
        r1.kill()
        r2.kill()
        doc = json.loads(
            cluster.moorage(
                "emergency-repair", "--data-dir", str(r0.data_dir), "--yes", "--json",
                timeout=3600,
            )
        )  # fmt: skip
        s.detail = f"replayed {doc['result']['journal_replayed']['applied']} journal entries"
    with report.timed("count on the repaired replica") as s:
        s.detail = _count(r0.url, args)
    with contextlib.suppress(CommandFailed, subprocess.TimeoutExpired):
        cluster.moorage("stop", "--data-dir", str(r0.data_dir), timeout=120)
    restored = Replica(cluster.root, "restored")
    cluster.nodes.append(restored)
    with report.timed("moorage restore (into a new replica, shared storage)") as s:
        cluster.moorage(
            "restore", "--yes", "--in", str(archive), *restored.flags(), "--storage",
            str(cluster.storage), "--json", timeout=3600,
        )  # fmt: skip
    with report.timed("count on the restored replica") as s:
        s.detail = _count(restored.url, args)


def markdown(report: Report) -> str:
    a = report.args
    lines = [
        "# Moorage at scale",
        "",
        *(line for line in machine_info(REPO_ROOT) if "Distribution" not in line),
        f"- filled: {a['tags']} tags in {a['repos']} repositories, plus {BIG} with "
        f"{a['big_tags']} tags and one manifest with {a['alias_tags']} more tags; "
        f"{report.fill_seconds:.0f} s through the API ({report.fill_rate:.0f} tags/s, "
        f"{CONCURRENCY} connections over 3 replicas)",
        f"- etcd database: {(report.etcd_db_bytes or 0) / 1e6:.1f} MB",
        "",
        "| operation | seconds | result |",
        "|---|---:|---|",
    ]
    for s in report.steps:
        secs = "-" if s.seconds is None else f"{s.seconds:.2f}"
        lines.append(f"| {s.name} | {secs} | {'ok' if s.ok else 'FAILED'}: {s.detail} |")
    lines += [
        "",
        "Paged reads as the registry grows (median of 15, milliseconds):",
        "",
        "| tags | repositories | catalog first page (n=1000) | tag list first page (n=100) |",
        "|---:|---:|---:|---:|",
    ]
    for f in report.flat:
        lines.append(
            f"| {f['tags']} | {f['repositories']} | {f['catalog_first_page_ms']:.1f} | "
            f"{f['tags_first_page_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--tags", type=int, default=100_000, help="tags over the repositories")
    p.add_argument("--repos", type=int, default=10_000, help="repositories")
    p.add_argument("--big-tags", type=int, default=20_000, help=f"tags in {BIG}")
    p.add_argument("--alias-tags", type=int, default=2_000, help="tags of one manifest")
    p.add_argument("--out", default=str(RESULTS / "scale"), help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moorage-scale-") as tmp:
        report = run(args, Path(tmp))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    doc = {
        "args": report.args,
        "fill_seconds": report.fill_seconds,
        "etcd_db_bytes": report.etcd_db_bytes,
        "steps": [s.__dict__ for s in report.steps],
        "paged_reads": report.flat,
    }
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    print(text)
    return 0 if all(s.ok for s in report.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
