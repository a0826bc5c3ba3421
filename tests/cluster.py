"""The cluster harness for the tests: the `harness` package's, re-exported under the names the
tests import (`Cluster`, `Node`, `moorage`, ...), with the small image helpers of tests/oci.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness.cluster import Cluster, Node
from harness.process import (
    ADMIN_PASSWORD,
    AUTH,
    STATUS_EXIT_CODES,
    CommandFailed,
    free_port,
    moorage,
    moorage_cmd,
)
from harness.replica import Replica

from tests.oci import OCI_MANIFEST, pull_image, push_image, sha256

__all__ = [
    "ADMIN_PASSWORD",
    "AUTH",
    "OCI_MANIFEST",
    "STATUS_EXIT_CODES",
    "Cluster",
    "CommandFailed",
    "Node",
    "Replica",
    "cluster_of",
    "free_port",
    "moorage",
    "moorage_cmd",
    "pull_image",
    "push_image",
    "sha256",
]


@contextmanager
def cluster_of(replicas: int, *args: Any, **kwargs: Any) -> Iterator[Cluster]:
    """A cluster made the way an operator makes one (`install`, then `join` until it has
    `replicas`), shut down at the end; the arguments are `Cluster`'s."""
    c = Cluster(*args, **kwargs)
    try:
        c.install()
        for _ in range(replicas - 1):
            c.join()
        yield c
    finally:
        c.shutdown()
