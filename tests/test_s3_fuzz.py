"""The API fuzz (tests/test_fuzz.py's strategies and checks) against a replica whose blob
storage is S3 (a real SeaweedFS gateway): every answer below 500, the OCI error envelope on
every 4xx under /v2/, nothing hanging; afterwards the kept images pull back byte-identical,
nothing outside the replica's data directory changed, and no object of the bucket outside the
replica's prefix changed.

`make test` runs S3_SHARE of each surface's derandomized CI examples; `make fuzz` runs
FUZZ_EXAMPLES random ones per surface here too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from harness.seaweed import SeaweedFS

from tests import test_fuzz
from tests.test_fuzz import Target, fuzz_target

test_fuzz_v2 = test_fuzz.test_fuzz_v2
test_fuzz_manifests = test_fuzz.test_fuzz_manifests
test_fuzz_admin_api = test_fuzz.test_fuzz_admin_api
test_fuzz_uploads = test_fuzz.test_fuzz_uploads

#: Of each surface's CI examples (3000, 1000, 800, 600 on the filesystem), the share run here.
S3_SHARE = 0.1
PREFIX = f"s3-fuzz-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def target(seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The fuzz target on S3 (the store's credentials in the replica's environment)."""

    def outside() -> dict[str, tuple[str, int]]:
        return {k: v for k, v in seaweed.objects().items() if not k.startswith(f"{PREFIX}/")}

    with pytest.MonkeyPatch.context() as mp:
        for name, value in seaweed.env().items():
            mp.setenv(name, value)
        site = tmp_path_factory.mktemp("fuzz-s3")
        with fuzz_target(site, storage=seaweed.storage_url(PREFIX)) as fuzz:
            fuzz.ci_share = S3_SHARE
            fuzz.store_outside = outside
            fuzz.store_before = outside()
            assert seaweed.keys(f"{PREFIX}/blobs/"), "the replica's blobs are not in the bucket"
            yield fuzz
