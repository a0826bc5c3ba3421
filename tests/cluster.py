"""A cluster of replicas built with the real commands (`install`, `join`, ...) on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from chaos import cluster as chaos_cluster

from tests.conftest import ADMIN_PASSWORD, AUTH, moorage_cmd

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Node(chaos_cluster.Node):
    """A replica on loopback (the chaos harness's node), with the tests' admin password."""

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=AUTH, timeout=timeout)


STATUS_EXIT_CODES = {
    "healthy": 0,
    "replicas-unhealthy": 10,
    "quorum-lost": 11,
    "unreachable": 12,
    "all-lost": 13,
    "starting": 14,
}


def moorage(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MOORAGE_PASSWORD=ADMIN_PASSWORD)
    # `moorage` on PATH as `make install` puts it: status prints commands as `moorage ...`.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MOORAGE_ADMIN_PASSWORD", None)
    out = subprocess.run(
        moorage_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"moorage {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        )
    return out


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = root / "blobs"
        self.nodes: list[Node] = []

    def install(self) -> Node:
        node = Node(self.root, "r0")
        doc = json.loads(
            moorage(
                "install", *node.flags(), "--storage", str(self.storage),
                "--admin-password", ADMIN_PASSWORD, "--json",
            ).stdout
        )  # fmt: skip
        node.replica_id = doc["replica_id"]
        self.nodes.append(node)
        return node

    def join(self, via: Node | None = None, **kw: Any) -> Node:
        node = Node(self.root, f"r{len(self.nodes)}")
        out = self.join_raw(node, via, **kw)
        assert out.returncode == 0, out.stderr
        node.replica_id = json.loads(out.stdout)["replica_id"]
        self.nodes.append(node)
        return node

    def join_raw(
        self, node: Node, via: Node | None = None, unsafe: bool = False
    ) -> subprocess.CompletedProcess[str]:
        via = via or self.nodes[0]
        extra = ["--unsafe-join"] if unsafe else []
        return moorage("join", "--existing", via.url, *node.flags(), "--json", *extra, check=False)

    def urls(self, nodes: list[Node] | None = None) -> str:
        return ",".join(n.url for n in (nodes or self.nodes))

    def status(self, nodes: list[Node] | None = None) -> dict[str, Any]:
        out = moorage("status", "--existing", self.urls(nodes), "--json", check=False)
        # status exits by scenario: 0 healthy, 10-13 the failure scenarios.
        assert out.returncode in (0, 10, 11, 12, 13, 14), (out.returncode, out.stdout, out.stderr)
        doc: dict[str, Any] = json.loads(out.stdout)
        assert out.returncode == STATUS_EXIT_CODES[doc["scenario"]], (out.returncode, doc)
        return doc

    def wait_status(
        self, want: str, nodes: list[Node] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            doc = self.status(nodes)
            if doc["scenario"] == want:
                return doc
            time.sleep(0.5)
        raise AssertionError(f"status never became {want}: {json.dumps(doc, indent=1)}")

    def leader(self) -> Node:
        doc = self.status()
        rid = next(r["id"] for r in doc["replicas"] if r["leader"])
        return next(n for n in self.nodes if n.replica_id == rid)

    def shutdown(self) -> None:
        for node in self.nodes:
            node.signal(signal.SIGCONT)
            if node.data_dir.exists():
                moorage("stop", "--data-dir", str(node.data_dir), check=False)
            node.signal(signal.SIGKILL)


def push_image(node: Node, repo: str, tag: str, seed: str) -> bytes:
    """Push a config, a layer and a manifest through `node`; return the manifest bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer of {seed}".encode() * 500
    with node.client() as c:
        for blob in (config, layer):
            r = c.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob)
            assert r.status_code == 201, r.text
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha256(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        r = c.put(
            f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert r.status_code == 201, r.text
    return body


def pull_image(node: Node, repo: str, tag: str) -> bytes:
    with node.client() as c:
        r = c.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200, (node.url, r.text)
        doc = json.loads(r.content)
        for desc in [doc["config"], *doc["layers"]]:
            blob = c.get(f"/v2/{repo}/blobs/{desc['digest']}")
            assert blob.status_code == 200
            assert sha256(blob.content) == desc["digest"]
        return r.content
