"""Images for the garbage collection tests: OCI layouts written by hand (deterministic
tar.gz layers, so images share layers exactly where a test says), pushed and pulled with
skopeo, and small images pushed through the API."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.process import AUTH

from tests.oci import sha256

CREDS = f"{AUTH[0]}:{AUTH[1]}"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Layer:
    digest: str
    diff_id: str
    data: bytes


def layer(name: str, size: int = 48 * 1024) -> Layer:
    """A tar.gz layer of one file whose content derives from `name` (same name, same bytes)."""
    content = b"".join(
        hashlib.sha256(f"{name}/{i}".encode()).digest() for i in range(size // 32 + 1)
    )[:size]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(f"files/{name}")
        info.size, info.mtime = len(content), 0
        tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return Layer(sha256(out.getvalue()), sha256(raw.getvalue()), out.getvalue())


@dataclass(frozen=True)
class Image:
    tag: str
    config: bytes
    layers: tuple[Layer, ...]
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def blobs(self) -> dict[str, bytes]:
        """Every blob of the image by digest, the config first (not the manifest)."""
        return {sha256(self.config): self.config, **{x.digest: x.data for x in self.layers}}


def image(tag: str, layers: list[Layer], seed: str) -> Image:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": x.digest, "size": len(x.data)} for x in layers
            ],
        },
        sort_keys=True,
    ).encode()
    return Image(tag, config, tuple(layers), manifest)


def write_layout(root: Path, images: list[Image]) -> Path:
    """An OCI image layout holding `images`, each under its tag."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for img in images:
        for digest, data in {**img.blobs, img.digest: img.manifest}.items():
            (blobs / digest.split(":", 1)[1]).write_bytes(data)
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": img.digest,
                "size": len(img.manifest),
                "annotations": {REF_NAME: img.tag},
            }
        )
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return root


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=240)
    if check and p.returncode != 0:
        pytest.fail(f"skopeo {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def push(layout: Path, tag: str, ref: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """skopeo copy oci:LAYOUT:TAG docker://REF (REF: host/repo:tag)."""
    return skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", CREDS,
        f"oci:{layout}:{tag}", f"docker://{ref}", check=check,
    )  # fmt: skip


def delete(ref: str) -> None:
    skopeo("delete", "--tls-verify=false", "--creds", CREDS, f"docker://{ref}")


def pull_identical(ref: str, img: Image, work: Path) -> None:
    """skopeo pulls `ref` into a fresh layout: the manifest and every blob byte-identical."""
    out = work / f"pull-{uuid.uuid4().hex[:8]}"
    digestfile = work / f"digest-{uuid.uuid4().hex[:8]}"
    skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", CREDS, "--digestfile", str(digestfile),
        f"docker://{ref}", f"oci:{out}:{img.tag}",
    )  # fmt: skip
    assert digestfile.read_text().strip() == img.digest, ref
    blobs = out / "blobs" / "sha256"
    for digest, data in {**img.blobs, img.digest: img.manifest}.items():
        assert (blobs / digest.split(":", 1)[1]).read_bytes() == data, (ref, digest)
