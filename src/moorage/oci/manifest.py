"""Manifest parsing and validation (OCI image manifest and index, Docker schema 2)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from moorage.errors import DigestInvalid, ManifestInvalid
from moorage.oci import mediatypes as mt
from moorage.oci.digest import parse_digest

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream"})


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    def referrer_artifact_type(self) -> str | None:
        """The artifactType a referrers listing shows: the manifest's own, else its config's."""
        if self.artifact_type:
            return self.artifact_type
        if self.config is not None and not self.is_index:
            return self.config.media_type
        return None


#: The largest descriptor size (the OCI image spec's int64).
MAX_SIZE = 2**63 - 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys all differ: parsers disagree on which copy of a repeated key
    counts (Go's and Python's the last, others the first), so the registry would check one
    manifest and some client pull another."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


# The fields of each object a client decodes into a struct. Go's encoding/json (docker,
# containerd, skopeo, podman) matches keys to them ignoring case ("Layers" fills `layers`);
# this parser does not. So a key that differs from one of them by case alone is refused:
# otherwise the registry would check one set of blobs and the clients pull another.
_MANIFEST_KEYS = frozenset(
    {"schemaVersion", "mediaType", "artifactType", "config", "layers", "manifests", "subject",
     "annotations"}
)  # fmt: skip
_DESCRIPTOR_KEYS = frozenset(
    {"mediaType", "digest", "size", "urls", "annotations", "data", "artifactType", "platform"}
)
_PLATFORM_KEYS = frozenset(
    {"architecture", "os", "os.version", "os.features", "variant", "features"}
)
_FOLDED = {
    keys: {k.casefold(): k for k in keys}
    for keys in (_MANIFEST_KEYS, _DESCRIPTOR_KEYS, _PLATFORM_KEYS)
}


def _exact_keys(raw: dict[str, Any], known: frozenset[str], where: str) -> None:
    folded = _FOLDED[known]
    for key in raw:
        if key not in known and (meant := folded.get(key.casefold())) is not None:
            raise ManifestInvalid(
                f"{where}: key {key[:40]!r} differs from {meant!r} by case only (clients "
                f"would read it as {meant!r}): spell it {meant!r}"
            )


def _type_text(value: str, where: str, name: str) -> str:
    fault = mt.text_fault(value)
    if fault is not None:
        raise ManifestInvalid(f"{where}{name} {fault}")
    return value


def _descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestInvalid(f"{where}: a descriptor must be a JSON object")
    _exact_keys(raw, _DESCRIPTOR_KEYS, where)
    if isinstance(raw.get("platform"), dict):
        _exact_keys(raw["platform"], _PLATFORM_KEYS, f"{where}.platform")
    media_type = raw.get("mediaType")
    digest = raw.get("digest")
    size = raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where}: mediaType is missing")
    _type_text(media_type, f"{where}: ", "mediaType")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where}: digest is missing")
    try:
        parse_digest(digest)
    except DigestInvalid as exc:
        raise ManifestInvalid(f"{where}: {exc.message}") from None
    if type(size) is not int or not 0 <= size <= MAX_SIZE:
        raise ManifestInvalid(f"{where}: size must be an integer from 0 to 2^63-1 (int64)")
    artifact_type = raw.get("artifactType")
    if isinstance(artifact_type, str):
        _type_text(artifact_type, f"{where}: ", "artifactType")
    annotations = raw.get("annotations")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        annotations=_annotations(annotations, where),
    )


def _annotations(raw: object, where: str) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ManifestInvalid(f"{where}: annotations must map strings to strings")
    return dict(raw)


def _descriptors(raw: object, where: str) -> tuple[Descriptor, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ManifestInvalid(f"{where} must be a list of descriptors")
    return tuple(_descriptor(item, f"{where}[{i}]") for i, item in enumerate(raw))


def parse_manifest(body: bytes, content_type: str | None) -> Manifest:
    """Parse a manifest; the media type comes from Content-Type or, failing that, the body."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in mt.DOCKER_SCHEMA1:
        raise ManifestInvalid(_SCHEMA1)
    if body.startswith(b"\xef\xbb\xbf"):
        raise ManifestInvalid("manifest starts with a byte order mark (BOM): remove it")
    try:
        # Strict UTF-8 and no NaN/Infinity: what every client's JSON parser accepts (Python's
        # alone would take UTF-16, a BOM or NaN, and a pushed tag no client could pull).
        doc = json.loads(body.decode(), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ManifestInvalid(f"manifest repeats the key {str(exc)[:40]!r} in one object") from None
    except (ValueError, UnicodeDecodeError):
        raise ManifestInvalid("manifest is not valid JSON (UTF-8, RFC 8259)") from None
    except RecursionError:
        raise ManifestInvalid("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    _exact_keys(doc, _MANIFEST_KEYS, "manifest")
    version = doc.get("schemaVersion")
    if version == 1:
        raise ManifestInvalid(_SCHEMA1)
    if type(version) is not int or version != 2:  # not 2.0, not true
        raise ManifestInvalid("schemaVersion must be 2")
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise ManifestInvalid("mediaType must be a string")
    media_type = _media_type(declared, body_type, doc)
    if media_type not in mt.MANIFESTS:
        raise ManifestInvalid(
            f"unsupported manifest media type {media_type!r}: push an OCI image manifest or "
            "index, or a Docker schema 2 manifest or manifest list"
        )
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    if artifact_type is not None:
        _type_text(artifact_type, "", "artifactType")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _annotations(doc.get("annotations"), "annotations") or {}
    if media_type in mt.INDEXES:
        if not isinstance(doc.get("manifests"), list):
            raise ManifestInvalid("an index must have a manifests list")
        return Manifest(
            media_type=media_type,
            children=_descriptors(doc["manifests"], "manifests"),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    if "config" not in doc:
        raise ManifestInvalid("an image manifest must have a config descriptor")
    return Manifest(
        media_type=media_type,
        config=_descriptor(doc["config"], "config"),
        layers=_descriptors(doc.get("layers", []), "layers"),
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def _media_type(declared: str, body_type: str | None, doc: dict[str, Any]) -> str:
    if declared not in _GENERIC_CONTENT_TYPES:
        if body_type and body_type != declared:
            raise ManifestInvalid(
                f"Content-Type {declared!r} does not match the manifest's mediaType {body_type!r}"
            )
        return declared
    if body_type:
        return body_type
    return mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST


_SCHEMA1 = (
    "Docker schema 1 manifests are not supported: push with a current client "
    "(it sends schema 2 or OCI manifests)"
)
