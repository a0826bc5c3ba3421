"""Fixtures only: real Moorage replicas (each with its own etcd) on 127.0.0.1.

The harness that runs them is the `harness` package; OCI request helpers are in tests/oci.py
and the conformance data sets in tests/datasets.py. Every process is started by the test and
stopped by pid; data lives under pytest's tmp dirs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness.process import signal_pids
from harness.replica import Replica


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica shared by the tests that do not restart or kill it."""
    r = Replica(tmp_path_factory.mktemp("shared") / "data")
    r.start()
    yield r
    r.stop()


@pytest.fixture
def client(registry: Replica) -> Iterator[httpx.Client]:
    with registry.client() as c:
        yield c


@pytest.fixture
def fresh_replica(tmp_path: Path) -> Iterator[Replica]:
    """A replica of the test's own, for tests that restart or kill it."""
    r = Replica(tmp_path / "data")
    yield r
    r.kill() if r.proc is not None and r.proc.poll() is None else r.stop()
    signal_pids(list(r.pids().values()), signal.SIGKILL)
