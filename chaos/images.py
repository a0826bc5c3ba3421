"""Small OCI images: build, push (recording only acknowledged pushes), pull and verify."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Image:
    config: bytes
    layers: tuple[bytes, ...]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def blobs(self) -> tuple[bytes, ...]:
        return (self.config, *self.layers)

    @property
    def blob_digests(self) -> tuple[str, ...]:
        return tuple(sha256(b) for b in self.blobs)


def base_layer(index: int, size: int = 4096) -> bytes:
    """A layer many images share (the same bytes for the same index in every run)."""
    seed = hashlib.sha256(f"moorage-chaos-base-{index}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def make_image(seed: str, layer_size: int = 2048, base: bytes | None = None) -> Image:
    """An image whose config and layer are unique to `seed`, on top of a shared `base`
    layer when one is given."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = seed.encode() + b"\n" + os.urandom(max(0, layer_size - len(seed) - 1))
    layers = (layer,) if base is None else (base, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in layers
            ],
        }
    ).encode()
    return Image(config, layers, manifest)


class PushRefused(Exception):
    """The registry answered a push step with an error status."""

    def __init__(self, step: str, resp: httpx.Response) -> None:
        super().__init__(f"{step}: HTTP {resp.status_code} {resp.text[:200]}")
        self.step = step
        self.status = resp.status_code


def push(
    client: httpx.Client, repo: str, tag: str, image: Image, mount_from: str | None = None
) -> str:
    """Push blobs then the manifest; return the digest the registry acknowledged (201).
    With `mount_from` it pushes the way docker does: a blob the repository has already
    (HEAD 200) is not sent, one `mount_from` has is mounted, the rest are uploaded.

    Raises PushRefused for an error answer and httpx.HTTPError when no answer came.
    """
    for blob in image.blobs:
        digest = sha256(blob)
        if mount_from is not None:
            if client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
                continue
            r = client.post(f"/v2/{repo}/blobs/uploads/?mount={digest}&from={mount_from}")
            if r.status_code == 201:
                continue
            if r.status_code == 202:  # not mountable: the session it opened is not used
                client.delete(r.headers.get("location", f"/v2/{repo}/blobs/uploads/x"))
        r = client.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", content=blob)
        if r.status_code != 201:
            raise PushRefused("blob upload", r)
    r = client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    if r.status_code != 201:
        raise PushRefused("manifest put", r)
    return r.headers.get("docker-content-digest") or image.digest


def verify(client: httpx.Client, repo: str, tag: str, digest: str, blobs: tuple[str, ...]) -> str:
    """Pull repo:tag and check every digest; '' when all is well, else what is wrong."""
    r = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    if r.status_code != 200:
        return f"manifest: HTTP {r.status_code} {r.text[:80]}"
    if sha256(r.content) != digest:
        return f"manifest {repo}:{tag}: digest {sha256(r.content)}, acknowledged {digest}"
    doc = json.loads(r.content)
    named = (doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"]))
    if tuple(named) != blobs:
        return f"manifest {repo}:{tag} names blobs {named}, acknowledged {blobs}"
    for d in blobs:
        b = client.get(f"/v2/{repo}/blobs/{d}")
        if b.status_code != 200:
            return f"blob {repo}@{d}: HTTP {b.status_code}"
        if sha256(b.content) != d:
            return f"blob {repo}@{d}: content hashes to {sha256(b.content)}"
    return ""
