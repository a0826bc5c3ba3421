"""The fixed test data of distribution-spec's Ginkgo conformance suite (setup.go)."""

from __future__ import annotations

import base64
import json
import secrets

import httpx

from tests.oci import (
    MT_OCI_CONFIG,
    MT_OCI_EMPTY,
    MT_OCI_IMAGE,
    MT_OCI_INDEX,
    MT_OCI_LAYER_GZ,
    MT_OCTET,
    oci_digest,
    upload_url,
)


class LegacyData:
    """The fixed test data of the Ginkgo suite's setup.go (configs, manifests, blobs, refs)."""

    # base64 of a small tarball holding test.txt (setup.go's layerBase64String)
    LAYER_B64 = (
        "H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0"
        "WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD"
        "jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA"
    )
    ANNOTATION_KEY = "org.opencontainers.conformance.test"
    REF_TYPE_A = "application/vnd.nhl.peanut.butter.bagel"
    REF_TYPE_B = "application/vnd.nba.strawberry.jam.croissant"
    REF_TYPE_INDEX = "application/vnd.food.stand"
    NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"
    INVALID_MANIFEST = b"blablabla"
    DUMMY_DIGEST = oci_digest(b"hello world")
    EMPTY_JSON = b"{}"

    def __init__(self) -> None:

        def dumps(doc: object) -> bytes:
            return json.dumps(doc, indent="\t").encode()

        self.configs: list[bytes] = []
        for _ in range(4 + 1):
            author = "".join(
                secrets.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")
                for _ in range(16)
            )
            config = {
                "author": author,
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }
            self.configs.append(dumps(config))
        self.layer = base64.b64decode(self.LAYER_B64)
        self.layer_digest = oci_digest(self.layer)
        layers = [
            {
                "mediaType": MT_OCI_LAYER_GZ,
                "digest": self.layer_digest,
                "size": len(self.layer),
                "data": None,
                "newUnspecifiedField": None,
            }
        ]

        def config_desc(i: int) -> dict[str, object]:
            return {
                "mediaType": MT_OCI_CONFIG,
                "digest": oci_digest(self.configs[i]),
                "size": len(self.configs[i]),
                "data": base64.b64encode(self.configs[i]).decode(),
                "newUnspecifiedField": base64.b64encode(b"hello world").decode(),
            }

        self.manifests = [
            dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MT_OCI_IMAGE,
                    "config": config_desc(i),
                    "layers": layers,
                }
            )
            for i in range(len(self.configs))
        ]
        self.empty_layer_manifest = dumps(
            {"schemaVersion": 2, "config": config_desc(1), "layers": []}
        )
        self.blob_a = secrets.token_bytes(42)
        self.blob_b = secrets.token_bytes(42)
        half = 42 // 2 + 1
        self.blob_b_chunks = (self.blob_b[:half], self.blob_b[half:])
        self.blob_b_ranges = (f"0-{half - 1}", f"{half}-{41}")
        # referrers (03_discovery_test.go)
        empty = {"mediaType": MT_OCI_EMPTY, "size": 2, "digest": oci_digest(self.EMPTY_JSON)}
        self.ref_blob_a = b"NHL Peanut Butter on my NHL bagel"
        self.ref_blob_b = b"NBA Strawberry Jam on my NBA croissant"

        def subject(i: int) -> dict[str, object]:
            return {
                "mediaType": MT_OCI_IMAGE,
                "size": len(self.manifests[i]),
                "digest": oci_digest(self.manifests[i]),
            }

        def blob_desc(mt: str, data: bytes) -> dict[str, object]:
            return {"mediaType": mt, "size": len(data), "digest": oci_digest(data)}

        self.annotations: dict[str, str] = {}

        def artifact(
            config: dict[str, object],
            layer: dict[str, object],
            subj: int,
            artifact_type: str | None,
            note: str | None,
        ) -> bytes:
            doc: dict[str, object] = {"schemaVersion": 2, "mediaType": MT_OCI_IMAGE}
            if artifact_type:
                doc["artifactType"] = artifact_type
            doc.update({"config": config, "layers": [layer], "subject": subject(subj)})
            if note:
                doc["annotations"] = {self.ANNOTATION_KEY: note}
            body = dumps(doc)
            if note:
                self.annotations[oci_digest(body)] = note
            return body

        a_conf = blob_desc(self.REF_TYPE_A, self.ref_blob_a)
        b_conf = blob_desc(self.REF_TYPE_B, self.ref_blob_b)
        self.refs_a_config = artifact(a_conf, empty, 4, None, "test config a")
        self.refs_b_config = artifact(b_conf, empty, 4, None, "test config b")
        self.refs_a_layer = artifact(empty, a_conf, 4, self.REF_TYPE_A, "test layer a")
        self.refs_b_layer = artifact(empty, b_conf, 4, self.REF_TYPE_B, "test layer b")
        self.refs_c_layer = artifact(empty, b_conf, 3, self.REF_TYPE_B, None)
        index_doc = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "artifactType": self.REF_TYPE_INDEX,
            "manifests": [
                blob_desc(MT_OCI_IMAGE, self.refs_a_config),
                blob_desc(MT_OCI_IMAGE, self.refs_a_layer),
            ],
            "subject": subject(4),
            "annotations": {self.ANNOTATION_KEY: "test index"},
        }
        self.refs_index = dumps(index_doc)
        self.annotations[oci_digest(self.refs_index)] = "test index"

    @staticmethod
    def push_blob(c: httpx.Client, repo: str, data: bytes) -> httpx.Response:
        """The setup steps' POST then PUT with ?digest=, expecting a 2xx."""
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        r = c.put(
            upload_url(r.headers["location"], digest=oci_digest(data)),
            content=data,
            headers={"Content-Type": MT_OCTET},
        )
        assert 200 <= r.status_code < 300, r.text
        return r

    @staticmethod
    def push_manifest(
        c: httpx.Client, repo: str, ref: str, body: bytes, mt: str = MT_OCI_IMAGE
    ) -> httpx.Response:
        r = c.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": mt})
        assert 200 <= r.status_code < 300, r.text
        return r
