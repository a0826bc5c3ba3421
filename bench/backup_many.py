"""Time `moorage backup` of a registry with many manifests (not a test).

    python -m bench.backup_many --root /tmp/bb --manifests 10000 [--repos 100] [--reuse]

Installs a one-replica cluster under ROOT (or reuses it with --reuse), pushes MANIFESTS
distinct manifests (one small config and layer per repository, a tag per manifest), then
times `moorage backup` (and `backup verify`) and prints the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness.process
import httpx
from harness.process import AUTH

OCI = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def moorage(*args: str) -> subprocess.CompletedProcess[str]:
    return harness.process.moorage(*args, check=False)


def fill(url: str, manifests: int, repos: int) -> None:
    per_repo = manifests // repos

    def one_repo(r: int) -> None:
        repo = f"bench/r{r}"
        config = json.dumps({"architecture": "amd64", "os": "linux", "r": r}).encode()
        layer = f"layer {r}".encode() * 100
        with httpx.Client(base_url=url, auth=AUTH, timeout=60) as c:
            for blob in (config, layer):
                resp = c.post(f"/v2/{repo}/blobs/uploads/?digest={sha(blob)}", content=blob)
                assert resp.status_code == 201, resp.text
            for i in range(per_repo):
                body = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": OCI,
                        "config": {
                            "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": sha(config),
                            "size": len(config),
                        },
                        "layers": [
                            {
                                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                                "digest": sha(layer),
                                "size": len(layer),
                            }
                        ],
                        "annotations": {"n": str(i)},
                    }
                ).encode()
                resp = c.put(
                    f"/v2/{repo}/manifests/t{i}", content=body, headers={"Content-Type": OCI}
                )
                assert resp.status_code == 201, resp.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_repo, range(repos)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--manifests", type=int, default=10000)
    ap.add_argument("--repos", type=int, default=100)
    ap.add_argument("--port", type=int, default=5390)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--backup-args", default="", help="extra flags for moorage backup")
    args = ap.parse_args()
    data = args.root / "data"
    url = f"http://127.0.0.1:{args.port}"
    if not args.reuse:
        out = moorage(
            "install", "--data-dir", str(data), "--http-addr", f"127.0.0.1:{args.port}",
            "--storage", str(args.root / "blobs"), "--admin-password", AUTH[1],
            "--etcd-client-port", str(args.port + 1), "--etcd-peer-port", str(args.port + 2),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        start = time.monotonic()
        fill(url, args.manifests, args.repos)
        print(f"pushed {args.manifests} manifests in {time.monotonic() - start:.1f} s")
    else:
        moorage("start", "--data-dir", str(data))
    archive = args.root / f"backup-{time.time_ns()}.tar"
    start = time.monotonic()
    out = moorage(
        "backup", "--existing", url, "--out", str(archive), "--json", *args.backup_args.split()
    )
    took = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    print(
        f"backup: {took:.1f} s, {doc['counts']['manifests']} manifests, "
        f"{doc['size']} bytes, source {doc.get('source', 'http')}"
    )
    start = time.monotonic()
    out = moorage("backup", "verify", str(archive))
    print(f"verify: {time.monotonic() - start:.1f} s, rc {out.returncode} {out.stderr[-300:]}")
    archive.unlink()


if __name__ == "__main__":
    main()
