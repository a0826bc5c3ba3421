"""The generated conformance data sets of distribution-spec's conformance runner (`Dataset`,
`build_datasets`, `push_dataset`); the fixed data of its Ginkgo suite is tests/legacy_data.py."""

from __future__ import annotations

import base64
import gzip
import io
import json
import secrets
import tarfile
from typing import Any

import httpx

from tests.oci import (
    BLOB_PUSHERS,
    MT_EXAMPLE1,
    MT_EXAMPLE2,
    MT_OCI_CONFIG,
    MT_OCI_EMPTY,
    MT_OCI_IMAGE,
    MT_OCI_INDEX,
    MT_OCI_LAYER,
    MT_OCI_LAYER_GZ,
    MT_OCI_LAYER_ND,
    MT_OCI_LAYER_ND_GZ,
    MT_OCI_LAYER_PREFIX,
    MT_OCTET,
    manifest_put,
    oci_digest,
    rand_text,
)


class Dataset:
    """testdata.go's testData: blobs, manifests (in push order), tags and expected referrers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tags: dict[str, str] = {}
        self.tag_pushed: set[str] = set()
        self.desc: dict[str, dict[str, object]] = {}
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.man_order: list[str] = []
        self.referrers: dict[str, list[dict[str, object]]] = {}
        self.tag_param: set[str] = set()  # manifests pushed by digest with ?tag=
        self.bad_digest: set[str] = set()  # manifests whose bytes do not match the digest

    # -- generators (genBlob, genLayer, genConfig, genManifest, genIndex and their *Full) --
    @staticmethod
    def _json(doc: object, extra_field: bool) -> bytes:

        if extra_field and isinstance(doc, dict):
            doc = {**doc, f"org.{rand_text()}": rand_text()}
        return json.dumps(doc, separators=(",", ":")).encode()

    def _describe(self, mt: str, data: bytes, algo: str, set_data: bool) -> str:

        dig = oci_digest(data, algo)
        d: dict[str, object] = {"mediaType": mt, "digest": dig, "size": len(data)}
        if set_data:
            d["data"] = base64.b64encode(data).decode()
        self.desc[dig] = d
        return dig

    def add_blob(self, data: bytes, mt: str = MT_OCTET, algo: str = "sha256", **kw: Any) -> str:
        dig = self._describe(mt, data, algo, bool(kw.get("set_data")))
        self.blobs[dig] = data
        return dig

    def gen_blob(self, size: int = 2048, **kw: Any) -> tuple[str, bytes]:

        data = secrets.token_bytes(size)
        return self.add_blob(data, **kw), data

    def gen_layer(
        self, num: int, algo: str = "sha256", compress: bool = True, set_data: bool = False
    ) -> tuple[str, str]:

        content = (
            f"Conformance test file contents for file number {num}.\n"
            f"Todays lucky number is {secrets.randbelow(2**63)}\n"
        ).encode()
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(f"./conformance-{num}.txt")
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        uncompressed = raw.getvalue()
        body = gzip.compress(uncompressed, mtime=0) if compress else uncompressed
        dig = self._describe(MT_OCI_LAYER_GZ if compress else MT_OCI_LAYER, body, algo, set_data)
        self.blobs[dig] = body
        return dig, oci_digest(uncompressed, algo)

    def gen_config(
        self,
        platform: dict[str, str],
        diff_ids: list[str],
        algo: str = "sha256",
        extra_field: bool = False,
        set_data: bool = False,
    ) -> str:
        doc = {
            "author": "OCI Conformance Test",
            "architecture": platform.get("architecture", ""),
            "os": platform.get("os", ""),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        body = self._json(doc, extra_field)
        dig = self._describe(MT_OCI_CONFIG, body, algo, set_data)
        self.blobs[dig] = body
        return dig

    def _record(
        self,
        mt: str,
        body: bytes,
        algo: str,
        artifact_type: str | None,
        subject: dict[str, object] | None,
        annotations: dict[str, str] | None,
        tag: str | None,
        set_data: bool,
    ) -> str:
        dig = self._describe(mt, body, algo, set_data)
        self.manifests[dig] = body
        self.man_order.append(dig)
        if subject is not None:
            ref: dict[str, object] = {"mediaType": mt, "digest": dig, "size": len(body)}
            ref["artifactType"] = artifact_type or ""
            ref["annotations"] = annotations or {}
            self.referrers.setdefault(str(subject["digest"]), []).append(ref)
        if tag:
            self.tags[tag] = dig
        return dig

    @staticmethod
    def _annotations(annotations: dict[str, str] | None, uniq: bool) -> dict[str, str] | None:
        if not uniq:
            return annotations
        out = dict(annotations or {})
        out[f"org.example.{rand_text()}"] = rand_text()
        return out

    def gen_manifest(
        self,
        config: str,
        layers: list[dict[str, object]],
        algo: str = "sha256",
        artifact_type: str | None = None,
        subject: dict[str, object] | None = None,
        annotations: dict[str, str] | None = None,
        annotation_uniq: bool = False,
        tag: str | None = None,
        extra_field: bool = False,
        set_data: bool = False,
        **_: object,
    ) -> str:
        annotations = self._annotations(annotations, annotation_uniq)
        doc: dict[str, object] = {"schemaVersion": 2, "mediaType": MT_OCI_IMAGE}
        if artifact_type:
            doc["artifactType"] = artifact_type
        doc["config"] = self.desc[config]
        doc["layers"] = layers
        if subject is not None:
            doc["subject"] = subject
        if annotations:
            doc["annotations"] = annotations
        body = self._json(doc, extra_field)
        config_mt = str(self.desc[config]["mediaType"])
        return self._record(
            MT_OCI_IMAGE,
            body,
            algo,
            artifact_type or config_mt,
            subject,
            annotations,
            tag,
            set_data,
        )

    def gen_manifest_full(
        self,
        layer_count: int = 2,
        platform: dict[str, str] | None = None,
        layer_media_type: str = "",
        layer_bytes: bytes | None = None,
        config_media_type: str = "",
        config_bytes: bytes = b"",
        compress: bool = True,
        algo: str = "sha256",
        extra_field: bool = False,
        set_data: bool = False,
        **kw: Any,
    ) -> str:
        platform = platform or {"os": "linux", "architecture": "amd64"}
        compressed: list[str] = []
        uncompressed: list[str] = []
        for n in range(layer_count):
            if not layer_media_type or layer_media_type.startswith(MT_OCI_LAYER_PREFIX):
                c_dig, u_dig = self.gen_layer(n, algo, compress, set_data)
            elif layer_bytes is not None:
                c_dig = self.add_blob(layer_bytes, layer_media_type, algo, set_data=set_data)
                u_dig = c_dig
            else:
                c_dig, _ = self.gen_blob(mt=layer_media_type, algo=algo, set_data=set_data)
                u_dig = c_dig
            compressed.append(c_dig)
            uncompressed.append(u_dig)
        if not config_media_type or config_media_type == MT_OCI_CONFIG:
            config = self.gen_config(platform, uncompressed, algo, extra_field, set_data)
        else:
            config = self.add_blob(config_bytes, config_media_type, algo, set_data=set_data)
        layers = [self.desc[d] for d in compressed]
        return self.gen_manifest(
            config, layers, algo=algo, extra_field=extra_field, set_data=set_data, **kw
        )

    def gen_index(
        self,
        platforms: list[dict[str, str] | None],
        manifests: list[str],
        algo: str = "sha256",
        artifact_type: str | None = None,
        subject: dict[str, object] | None = None,
        annotations: dict[str, str] | None = None,
        annotation_uniq: bool = False,
        tag: str | None = None,
        extra_field: bool = False,
        set_data: bool = False,
        **_: object,
    ) -> str:
        annotations = self._annotations(annotations, annotation_uniq)
        entries = []
        for platform, dig in zip(platforms, manifests, strict=True):
            d = dict(self.desc[dig])
            if platform is not None:
                d["platform"] = platform
            entries.append(d)
        doc: dict[str, object] = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX}
        if artifact_type:
            doc["artifactType"] = artifact_type
        doc["manifests"] = entries
        if subject is not None:
            doc["subject"] = subject
        if annotations:
            doc["annotations"] = annotations
        body = self._json(doc, extra_field)
        return self._record(
            MT_OCI_INDEX, body, algo, artifact_type, subject, annotations, tag, set_data
        )

    def gen_index_full(self, platforms: list[dict[str, str]] | None = None, **kw: Any) -> str:
        if platforms is None:
            platforms = [
                {"os": "linux", "architecture": "amd64"},
                {"os": "linux", "architecture": "arm64"},
            ]
        children = [self.gen_manifest_full(platform=p, **kw) for p in platforms]
        return self.gen_index(list(platforms), children, **kw)


def build_datasets() -> dict[str, Dataset]:
    """runner.GenerateData with every data type and API of the 1.1+dev configuration on."""

    out: dict[str, Dataset] = {}

    def new(name: str) -> Dataset:
        out[name] = Dataset(name)
        return out[name]

    new("image").gen_manifest_full(tag="image")
    new("image-uncompressed").gen_manifest_full(tag="image-uncompressed", compress=False)
    large = {f"large-annotation-{i}": "A" * 10000 for i in range(390)}
    new("large-manifest").gen_manifest_full(tag="large-manifest", annotations=large)
    new("index").gen_index_full(tag="index")
    td = new("nested-index")
    d1 = td.gen_index_full()
    d2 = td.gen_index_full()
    td.gen_index([None, None], [d1, d2], tag="index-of-index")
    new("empty-index").gen_index_full(tag="index", platforms=[])
    artifact: dict[str, Any] = {
        "artifact_type": MT_EXAMPLE1,
        "config_media_type": MT_OCI_EMPTY,
        "config_bytes": b"{}",
        "layer_count": 1,
        "layer_media_type": MT_EXAMPLE1,
    }
    new("artifact").gen_manifest_full(tag="artifact", **artifact)
    new("artifact-index").gen_index_full(tag="artifact-index", **artifact)
    new("artifact-without-layers").gen_manifest_full(
        tag="artifact-without-layers",
        artifact_type=MT_EXAMPLE1,
        config_media_type=MT_OCI_EMPTY,
        config_bytes=b"{}",
        layer_count=1,
        layer_bytes=b"{}",
        layer_media_type=MT_OCI_EMPTY,
    )
    conformance = {"org.opencontainers.conformance": "hello conformance test"}
    td = new("artifacts-with-subject")
    subj = td.desc[td.gen_manifest_full(tag="image")]
    td.gen_manifest_full(subject=subj)
    for at, layer_mt, tag in (
        (MT_EXAMPLE1, MT_EXAMPLE1, "tagged-artifact1"),
        (MT_EXAMPLE2, MT_OCTET, "tagged-artifact2"),
    ):
        td.gen_manifest_full(
            artifact_type=at,
            annotations=conformance,
            annotation_uniq=True,
            config_media_type=MT_OCI_EMPTY,
            config_bytes=b"{}",
            layer_count=1,
            layer_media_type=layer_mt,
            subject=subj,
            tag=tag,
        )
    td = new("index-with-subject")
    subj = td.desc[td.gen_index_full(tag="index")]
    td.gen_index_full(
        artifact_type=MT_EXAMPLE1,
        annotations=conformance,
        annotation_uniq=True,
        config_media_type=MT_OCI_EMPTY,
        config_bytes=b"{}",
        layer_count=1,
        layer_media_type=MT_EXAMPLE1,
        subject=subj,
        tag="tagged-artifact",
    )
    td = new("missing-subject")
    td.gen_manifest_full(
        artifact_type=MT_EXAMPLE1,
        annotations=conformance,
        annotation_uniq=True,
        config_media_type=MT_OCI_EMPTY,
        config_bytes=b"{}",
        layer_count=1,
        layer_media_type=MT_EXAMPLE1,
        subject={
            "mediaType": MT_OCI_IMAGE,
            "size": 123,
            "digest": oci_digest(b"missing content"),
        },
        tag="tagged-artifact",
    )
    new("data-field").gen_manifest_full(tag="data-field", set_data=True)
    td = new("non-distributable-layers")
    conf_digs: list[str] = []
    layers: list[dict[str, object]] = []
    for mt, size in ((MT_OCI_LAYER_ND_GZ, 123456), (MT_OCI_LAYER_ND, 12345)):
        dig = oci_digest(secrets.token_bytes(256))
        conf_digs.append(dig)
        layers.append(
            {
                "mediaType": mt,
                "digest": dig,
                "size": size,
                "urls": ["https://store.example.com/blobs/sha256/" + dig.split(":")[1]],
            }
        )
    c_dig, u_dig = td.gen_layer(1)
    conf_digs.append(u_dig)
    layers.append(td.desc[c_dig])
    conf = td.gen_config({"os": "linux", "architecture": "amd64"}, conf_digs)
    td.gen_manifest(conf, layers, tag="non-distributable-image")
    new("custom-fields").gen_index_full(tag="custom-fields", extra_field=True)
    new("no-layers").gen_manifest_full(tag="no-layers", layer_count=0)
    new("sha512").gen_index_full(algo="sha512")
    for algo in ("sha256", "sha512"):
        name = f"tag-param-{algo}"
        td = new(name)
        td.gen_index_full(tag=name, algo=algo)
        for i, dig in enumerate(td.man_order):
            td.tags[f"{name}-{i}"] = dig
            td.tag_param.add(dig)
    td = new("bad-digest-image")
    dig = td.gen_manifest_full()
    td.bad_digest.add(dig)
    td.manifests[dig] += b"  "
    return out


def build_sparse() -> Dataset:
    """run.go's "sparse" data set (OCI_DATA_SPARSE): an image tagged sparse-image with one
    layer left out of the blobs (never pushed), and an index tagged sparse-index of a
    complete amd64 image and an arm64 entry naming 1024 random bytes nobody pushes."""
    td = Dataset("sparse")
    td.gen_manifest_full(tag="sparse-image")
    dropped = next(
        d for d in td.blobs if str(td.desc[d]["mediaType"]).startswith(MT_OCI_LAYER_PREFIX)
    )
    del td.blobs[dropped]
    del td.desc[dropped]
    amd64 = {"os": "linux", "architecture": "amd64"}
    image = td.gen_manifest_full(platform=amd64)
    absent = oci_digest(secrets.token_bytes(1024))
    td.desc[absent] = {"mediaType": MT_OCI_IMAGE, "digest": absent, "size": 1024}
    td.gen_index(
        [amd64, {"os": "linux", "architecture": "arm64"}], [image, absent], tag="sparse-index"
    )
    return td


def push_dataset(c: httpx.Client, repo: str, td: Dataset) -> None:
    """runner.TestPush: every blob (rotating over the upload APIs), manifests, then tags."""
    for i, (dig, body) in enumerate(td.blobs.items()):
        BLOB_PUSHERS[i % len(BLOB_PUSHERS)](c, repo, dig, body)
    for dig in td.man_order:
        tags = [t for t, d in td.tags.items() if d == dig] if dig in td.tag_param else []
        manifest_put(
            c, repo, dig, dig, td.manifests[dig], tags=tags, expect_bad=dig in td.bad_digest
        )
        td.tag_pushed.update(tags)
    for tag, dig in td.tags.items():
        if tag not in td.tag_pushed:
            manifest_put(c, repo, tag, dig, td.manifests[dig])
            td.tag_pushed.add(tag)
