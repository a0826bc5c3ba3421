"""oci/: names, tags, digests and manifests, edge cases."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moorage.errors import DigestInvalid, ManifestInvalid, NameInvalid
from moorage.oci import mediatypes as mt
from moorage.oci.digest import digest_of, is_digest, parse_digest
from moorage.oci.manifest import Descriptor, parse_manifest
from moorage.oci.names import MAX_NAME_LENGTH, is_valid_tag, validate_name

HEX64 = "a" * 64
DIGEST = f"sha256:{HEX64}"


@pytest.mark.parametrize(
    "name",
    ["a", "library/ubuntu", "a.b_c__d-e---f/g0", "0/1/2/3", "x" * MAX_NAME_LENGTH],
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Upper",
        "a/",
        "/a",
        "a//b",
        "a..b",
        "a___b",  # two underscores at most
        "-a",
        "a-",
        "a/.b",
        "a\n",  # `$` would match before it; fullmatch does not
        "a\x00b",
        "ünï",
        "a:b",
        "a b",
        "x" * (MAX_NAME_LENGTH + 1),
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid) as refused:
        validate_name(name)
    assert refused.value.message  # says what is allowed (or the length limit)


def test_invalid_name_message_is_bounded() -> None:
    with pytest.raises(NameInvalid) as refused:
        validate_name("A" * 200)
    assert "use lowercase letters" in refused.value.message
    assert len(refused.value.message) < 300


@pytest.mark.parametrize(
    ("tag", "valid"),
    [
        ("latest", True),
        ("_x", True),
        ("v1.2.3-rc_1", True),
        ("a" * 128, True),
        ("a" * 129, False),
        (".hidden", False),
        ("-dash", False),
        ("", False),
        ("tag\n", False),
        ("t/a", False),
        ("t:a", False),
        ("tåg", False),
    ],
)
def test_tags(tag: str, valid: bool) -> None:
    assert is_valid_tag(tag) is valid


def test_digests() -> None:
    d = parse_digest(DIGEST)
    assert (d.algorithm, d.encoded, str(d)) == ("sha256", HEX64, DIGEST)
    assert parse_digest("sha512:" + "0" * 128).algorithm == "sha512"
    assert str(digest_of(b"")) == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    h = d.hasher()
    h.update(b"")
    assert h.hexdigest() == digest_of(b"").encoded
    assert str(digest_of(b"x", "sha512")).startswith("sha512:")
    assert is_digest(DIGEST)
    assert not is_digest("latest")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("sha256:" + "A" * 64, "lowercase hex"),
        ("sha256:" + "a" * 63, "64 lowercase hex"),
        ("sha256:" + "a" * 65, "64 lowercase hex"),
        ("sha256:" + "g" * 64, "lowercase hex"),
        ("sha512:" + "a" * 64, "128 lowercase hex"),
        ("md5:" + "a" * 32, "unsupported digest algorithm"),
        ("sha256", "expected algorithm:hex"),
        (":" + HEX64, "expected algorithm:hex"),
        ("sha256:", "expected algorithm:hex"),
        ("SHA256:" + HEX64, "expected algorithm:hex"),
        (DIGEST + "\n", "expected algorithm:hex"),
        ("sha256:../../etc/passwd", "expected algorithm:hex"),
        ("sha256+b64:" + HEX64, "unsupported digest algorithm"),
    ],
)
def test_invalid_digests(value: str, reason: str) -> None:
    with pytest.raises(DigestInvalid) as refused:
        parse_digest(value)
    assert reason in refused.value.message


def test_invalid_digest_message_is_bounded() -> None:
    with pytest.raises(DigestInvalid) as refused:
        parse_digest("x" * 100_000)
    assert len(refused.value.message) < 300


def desc(media_type: str = mt.OCI_EMPTY, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": DIGEST, "size": 2, **extra}


def image(**extra: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": desc(), **extra}


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_image_manifest() -> None:
    m = parse_manifest(
        body(image(layers=[desc("application/vnd.oci.image.layer.v1.tar", size=10)])),
        mt.OCI_MANIFEST,
    )
    assert m.media_type == mt.OCI_MANIFEST
    assert not m.is_index
    assert m.config == Descriptor(mt.OCI_EMPTY, DIGEST, 2)
    assert [layer.size for layer in m.layers] == [10]
    assert m.children == ()
    assert m.subject is None
    assert m.referrer_artifact_type() == mt.OCI_EMPTY  # the config's, without its own


def test_artifact_with_subject_and_annotations() -> None:
    doc = image(
        artifactType="application/x-sbom",
        subject=desc(mt.OCI_MANIFEST, size=100),
        annotations={"org.opencontainers.image.created": "now"},
        layers=[desc(annotations={"k": "v"}, artifactType="x/y")],
    )
    m = parse_manifest(body(doc), None)
    assert m.artifact_type == "application/x-sbom"
    assert m.referrer_artifact_type() == "application/x-sbom"
    assert m.subject == Descriptor(mt.OCI_MANIFEST, DIGEST, 100)
    assert m.annotations == {"org.opencontainers.image.created": "now"}
    assert m.layers[0].to_json() == {
        "mediaType": mt.OCI_EMPTY,
        "digest": DIGEST,
        "size": 2,
        "artifactType": "x/y",
        "annotations": {"k": "v"},
    }


def test_index() -> None:
    doc = {"schemaVersion": 2, "manifests": [desc(mt.OCI_MANIFEST), desc(mt.OCI_MANIFEST)]}
    m = parse_manifest(body(doc), "application/json")
    assert m.media_type == mt.OCI_INDEX  # no mediaType anywhere: inferred from `manifests`
    assert m.is_index
    assert len(m.children) == 2
    assert m.config is None
    assert m.referrer_artifact_type() is None
    docker = dict(doc, mediaType=mt.DOCKER_MANIFEST_LIST)
    assert parse_manifest(body(docker), None).is_index


@pytest.mark.parametrize(
    ("content_type", "doc_type", "expected"),
    [
        (None, None, mt.OCI_MANIFEST),
        ("", mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST),
        ("application/octet-stream", mt.OCI_MANIFEST, mt.OCI_MANIFEST),
        (f"{mt.OCI_MANIFEST}; charset=utf-8", None, mt.OCI_MANIFEST),
        (mt.OCI_MANIFEST.upper(), mt.OCI_MANIFEST, mt.OCI_MANIFEST),
        (mt.DOCKER_MANIFEST, None, mt.DOCKER_MANIFEST),
    ],
)
def test_media_type_from_content_type_or_body(
    content_type: str | None, doc_type: str | None, expected: str
) -> None:
    doc = image()
    del doc["mediaType"]
    if doc_type is not None:
        doc["mediaType"] = doc_type
    assert parse_manifest(body(doc), content_type).media_type == expected


@pytest.mark.parametrize(
    ("raw", "content_type", "reason"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        # What Go clients cannot parse: a tag pushed so could never be pulled.
        (b"\xef\xbb\xbf" + body(image()), None, "byte order mark"),
        (body(image()).decode().encode("utf-16"), None, "not valid JSON"),
        (body(image()).replace(b"{", b'{"n": NaN, ', 1), None, "not valid JSON"),
        (body(image()).replace(b"{", b'{"n": -Infinity, ', 1), None, "not valid JSON"),
        (body(image(schemaVersion=2.0)), None, "schemaVersion must be 2"),
        (body(image(config=desc(size=2**63))), None, "size must be an integer from 0 to 2^63-1"),
        (body(image(config=desc(size=10**30))), None, "size must be an integer from 0 to 2^63-1"),
        (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
        (b"[]", None, "must be a JSON object"),
        (b'"s"', None, "must be a JSON object"),
        (body({"schemaVersion": 1}), None, "schema 1"),
        (body(image()), "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"),
        (body(image(schemaVersion="2")), None, "schemaVersion must be 2"),
        (body(image(schemaVersion=True)), None, "schema"),  # (true == 1: "schema 1")
        (body(image(schemaVersion=3)), None, "schemaVersion must be 2"),
        (body(image(mediaType=5)), None, "mediaType must be a string"),
        (body(image()), mt.OCI_INDEX, "does not match"),
        (body(image(mediaType="text/plain")), None, "unsupported manifest media type"),
        (body(image(artifactType=["x"])), None, "artifactType must be a string"),
        (body({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}), None, "config descriptor"),
        (body({"schemaVersion": 2, "mediaType": mt.OCI_INDEX}), None, "manifests list"),
        (body(image(config=[])), None, "config: a descriptor must be a JSON object"),
        (body(image(config=desc(mediaType=""))), None, "config: mediaType is missing"),
        (body(image(config=desc(digest=None))), None, "config: digest is missing"),
        (body(image(config=desc(digest="sha256:x"))), None, "config: invalid sha256 digest"),
        (body(image(config=desc(digest="x"))), None, "config: invalid digest 'x'"),
        (body(image(config=desc(size=-1))), None, "size must be an integer from 0 to 2^63-1"),
        (body(image(config=desc(size=True))), None, "size must be an integer from 0 to 2^63-1"),
        (body(image(config=desc(size=1.5))), None, "size must be an integer from 0 to 2^63-1"),
        (body(image(config=desc(size="2"))), None, "size must be an integer from 0 to 2^63-1"),
        (body(image(layers={})), None, "layers must be a list"),
        (body(image(layers=[desc(), 1])), None, "layers[1]: a descriptor must be"),
        (body(image(annotations={"k": 1})), None, "annotations must map strings"),
        (body(image(annotations=[])), None, "annotations must map strings"),
        (body(image(subject="x")), None, "subject: a descriptor must be"),
        # Types a store record cannot hold (it would answer 503 on every read by digest and
        # stop garbage collection): refused at the PUT instead.
        (body(image(artifactType="a/b\n")), None, "artifactType holds control characters"),
        (body(image(artifactType="a/" + "b" * 4096)), None, "artifactType is longer than 4096"),
        (body(image(config=desc("a/b\u0001"))), None, "config: mediaType holds control"),
        (body(image(config=desc("a/" + "b" * 4096))), None, "config: mediaType is longer"),
        (body(image(layers=[desc(artifactType="x\ty")])), None, "layers[0]: artifactType holds"),
        (body(image(subject=desc("x\ny"))), None, "subject: mediaType holds control"),
        (body(image(artifactType="a/b\u0085")), None, "artifactType holds control"),  # C1
        (body(image(artifactType="a/b\u2028")), None, "artifactType holds control"),
        # A key twice in one object: parsers disagree on which copy counts.
        (b'{"schemaVersion": 2, "schemaVersion": 2, "config": {}}', None, "repeats the key"),
        (
            body(image()).replace(b'"config": {', b'"config": {"digest": "sha256:x", ', 1),
            None,
            "repeats the key 'digest'",
        ),
        (
            body(image(layers=[])).replace(b'"layers": []', b'"layers": [], "layers": []'),
            None,
            "repeats the key 'layers'",
        ),
        # Keys Go clients would read ignoring case: the registry would check other blobs than
        # the ones they pull.
        (body(image(Layers=[desc()])), None, "key 'Layers' differs from 'layers' by case only"),
        (body(image(CONFIG=desc())), None, "key 'CONFIG' differs from 'config'"),
        (body({**image(), "\u017fubject": desc()}), None, "differs from 'subject'"),  # long s
        (body(image(layers=[desc(Digest=DIGEST)])), None, "layers[0]: key 'Digest'"),
        (body(image(config=desc(SIZE=3))), None, "config: key 'SIZE' differs from 'size'"),
        (
            body({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [], "Manifests": []}),
            None,
            "key 'Manifests' differs from 'manifests'",
        ),
        (
            body(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_INDEX,
                    "manifests": [desc(mt.OCI_MANIFEST, platform={"OS": "linux"})],
                }
            ),
            None,
            "manifests[0].platform: key 'OS' differs from 'os'",
        ),
    ],
)
def test_invalid_manifests(raw: bytes, content_type: str | None, reason: str) -> None:
    with pytest.raises(ManifestInvalid) as refused:
        parse_manifest(raw, content_type)
    assert reason in refused.value.message


def test_keys_and_types_clients_read_alike_are_accepted() -> None:
    """Unknown keys (any case), annotation keys of any case, and long but storable types."""
    doc = image(
        layers=[desc("application/vnd.example+tar", artifactType="a/" + "b" * 4000)],
        annotations={"Layers": "x", "CONFIG": "y"},
        Extra=1,
        somethingElse={"Size": 1},
    )
    m = parse_manifest(body(doc), None)
    assert m.annotations == {"Layers": "x", "CONFIG": "y"}
    assert m.layers[0].artifact_type == "a/" + "b" * 4000


def test_non_distributable_layers() -> None:
    assert mt.is_non_distributable("application/vnd.oci.image.layer.nondistributable.v1.tar")
    assert mt.is_non_distributable("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    assert not mt.is_non_distributable("application/vnd.oci.image.layer.v1.tar")
    assert str(digest_of(mt.EMPTY_JSON)) == mt.EMPTY_JSON_DIGEST


def test_records_stored_with_unholdable_artifact_types_still_read() -> None:
    """Manifests PUT before the checks above could carry such types into the store: read
    back, the type is dropped (it only labels referrers), so the manifest can still be read,
    deleted, collected and backed up; a record corrupt in any other way is still refused."""
    from moorage.errors import RecordCorrupt
    from moorage.meta.records import ManifestRecord, decode_referrer

    for bad in ("a/b\n", "a/" + "b" * 4096):
        raw = json.dumps({"digest": DIGEST, "media_type": mt.OCI_MANIFEST, "size": 2,
                          "artifact_type": bad}).encode()  # fmt: skip
        assert ManifestRecord.decode(raw) == ManifestRecord(DIGEST, mt.OCI_MANIFEST, 2)
        ref = {"mediaType": mt.OCI_MANIFEST, "digest": DIGEST, "size": 2, "artifactType": bad}
        assert "artifactType" not in decode_referrer(json.dumps(ref).encode())
    corrupt = json.dumps({"digest": DIGEST, "media_type": mt.OCI_MANIFEST, "size": 2,
                          "artifact_type": 5}).encode()  # fmt: skip
    with pytest.raises(RecordCorrupt):
        ManifestRecord.decode(corrupt)
