"""Media types the registry understands."""

from __future__ import annotations

import re

#: Longest free-form string a store record holds (artifact types, URLs, hashes): a manifest
#: whose media or artifact types break these rules is refused at its PUT, as the records
#: that would hold them are when read back (meta.records.check_text).
MAX_TEXT = 4096
#: C0 and C1 controls, DEL, and the line and paragraph separators.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def text_fault(value: str) -> str | None:
    """Why a record could not hold `value` (None: it can)."""
    if len(value) > MAX_TEXT:
        return f"is longer than {MAX_TEXT} characters"
    if CONTROL.search(value):
        return "holds control characters"
    return None


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFESTS = IMAGE_MANIFESTS | INDEXES

# Layers whose bytes may live elsewhere: never required to be in the repository.
NON_DISTRIBUTABLE_PREFIXES = (
    "application/vnd.oci.image.layer.nondistributable.",
    "application/vnd.docker.image.rootfs.foreign.",
)

# The empty JSON object `{}`, the config of most artifacts.
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def is_non_distributable(media_type: str) -> bool:
    return media_type.startswith(NON_DISTRIBUTABLE_PREFIXES)
