"""`python -m bench.etcd_size`: the etcd database per 100,000 manifests, and what the
replica's compaction and defragmentation (moorage.cluster.etcd_defrag) gives back.

One etcd member started as a replica starts its own (cluster/etcd_process.py: the same
flags, mutual TLS), filled with the store's own code as a push fills it: one config blob
link per repository, then per manifest its layer's link and the manifest with one tag
(`link_blob`, `put_manifest`; no blob bytes: only etcd is measured). Then, each time with
the member's file size and the bytes in use (etcd's Status call):

1. filled;
2. after one round of the job as the replica runs it (compaction to etcd's own retention,
   100,000 revisions; defragmentation whatever the free space);
3. after deleting half of the manifests (`delete_manifest`: the manifest and its tag);
4. after a round with the production retention (the deletes are within it: little freed);
5. after a round with a retention of 1 revision (what the same round does once the deletes
   are 100,000 revisions old).

Writes bench/results/etcd-size.md and .json. Usage: python -m bench.etcd_size [--manifests N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from harness.etcd import start_etcd_member
from harness.process import REPO_ROOT

from bench.gc import MANIFEST as MANIFEST_TYPE
from bench.gc import _digest, _each, config_blob, layer_blob, manifest_body
from bench.report import machine_info
from moorage.cluster.etcd_defrag import Settings, run_round
from moorage.meta.etcd import ClientTls, EtcdCluster
from moorage.meta.etcd_maintenance import member_status
from moorage.meta.records import ManifestRecord

RESULTS = REPO_ROOT / "bench" / "results"
PER_REPO = 10
MB = 1e6


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _measure(url: str, tls: ClientTls, step: str, rows: list[dict[str, object]]) -> None:
    status = await member_status(url, 10.0, tls=tls)
    row = {
        "step": step,
        "db_bytes": status.db_size,
        "in_use_bytes": status.db_size_in_use,
        "revision": status.revision,
    }
    rows.append(row)
    _log(f"  {step}: {status.db_size / MB:.1f} MB, {status.db_size_in_use / MB:.1f} MB in use")


async def measure(url: str, tls: ClientTls, manifests: int) -> list[dict[str, object]]:
    store = EtcdCluster([url], tls=tls)
    rows: list[dict[str, object]] = []
    repos = [f"sizebench/r{r:05d}" for r in range(max(1, manifests // PER_REPO))]
    try:

        async def config(repo: str) -> None:
            data = config_blob(repo)
            assert await store.link_blob(repo, _digest(data), len(data))

        await _each(repos, config)

        async def push(i: int) -> None:
            repo = repos[i % len(repos)]
            layer = layer_blob(i)
            assert await store.link_blob(repo, _digest(layer), len(layer))
            body = manifest_body(config_blob(repo), layer)
            record = ManifestRecord(_digest(body), MANIFEST_TYPE, len(body))
            refs = [_digest(config_blob(repo)), _digest(layer)]
            assert not await store.put_manifest(repo, record, tags=[f"t{i}"], blobs=refs)

        start = time.monotonic()
        await _each(range(manifests), push)
        _log(f"  filled {manifests:,} manifests in {time.monotonic() - start:.0f} s")
        await _measure(url, tls, f"{manifests:,} manifests pushed", rows)
        every = Settings(min_free=1, min_ratio=0.0)  # any free space at all
        _log("  round: " + await run_round(store, tls, every))
        await _measure(url, tls, "after a round (retention 100,000 revisions)", rows)

        async def delete(i: int) -> None:
            repo = repos[i % len(repos)]
            body = manifest_body(config_blob(repo), layer_blob(i))
            assert await store.delete_manifest(repo, _digest(body))

        await _each(range(0, manifests, 2), delete)
        await _measure(url, tls, f"{manifests // 2:,} manifests deleted", rows)
        _log("  round: " + await run_round(store, tls, every))
        await _measure(url, tls, "after a round (retention 100,000 revisions)", rows)
        short = Settings(retention=1, min_free=1, min_ratio=0.0)
        _log("  round: " + await run_round(store, tls, short))
        await _measure(url, tls, "after a round, the deletes past the retention", rows)
    finally:
        await store.close()
    return rows


def run(root: Path, manifests: int) -> list[dict[str, object]]:
    with start_etcd_member(root) as (url, tls):
        return uvloop.run(measure(url, tls, manifests))


def markdown(rows: list[dict[str, object]], manifests: int) -> str:
    per = 100_000 / manifests
    first = rows[0]
    assert isinstance(first["db_bytes"], int)
    assert isinstance(first["in_use_bytes"], int)
    lines = [
        "# etcd database size",
        "",
        *(line for line in machine_info(REPO_ROOT) if "Distribution" not in line),
        f"- {manifests:,} manifests in {max(1, manifests // PER_REPO):,} repositories, one tag "
        "and two blob links each, written with the store's own code into one etcd member "
        "started as a replica's",
        f"- per 100,000 manifests: {first['db_bytes'] * per / MB:.0f} MB file, "
        f"{first['in_use_bytes'] * per / MB:.0f} MB in use",
        "",
        "| step | etcd file MB | in use MB | revision |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        assert isinstance(r["db_bytes"], int)
        assert isinstance(r["in_use_bytes"], int)
        lines.append(
            f"| {r['step']} | {r['db_bytes'] / MB:.1f} | {r['in_use_bytes'] / MB:.1f} | "
            f"{r['revision']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.etcd_size", description=__doc__.split("\n")[0]
    )
    p.add_argument("--manifests", type=int, default=100_000)
    p.add_argument("--out", default=str(RESULTS / "etcd-size"), help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moorage-etcd-size-") as tmp:
        rows = run(Path(tmp), args.manifests)
    text = markdown(rows, args.manifests)
    out = Path(args.out)
    out.with_suffix(".md").write_text(text)
    doc = {"manifests": args.manifests, "steps": rows}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
