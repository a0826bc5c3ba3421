"""The tier machinery itself: the table names real files, and the unit tier's guard holds."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TIERS

TESTS = Path(__file__).parent.parent


def test_every_listed_file_exists_and_every_tier_is_registered(
    pytestconfig: pytest.Config,
) -> None:
    missing = [name for name in TIERS if not (TESTS / name).is_file()]
    assert missing == [], "TIERS in tests/conftest.py lists files that are gone"
    registered = {line.split(":", 1)[0] for line in pytestconfig.getini("markers")}
    assert set(TIERS.values()) | {"unit", "replica"} <= registered


def test_this_test_is_marked_unit(request: pytest.FixtureRequest) -> None:
    tiers = {m.name for m in request.node.iter_markers()} & {
        "unit", "replica", "clients", "cluster", "netns", "chaos"
    }  # fmt: skip
    assert tiers == {"unit"}


def test_unit_tests_start_no_process_and_open_no_connection() -> None:
    with pytest.raises(AssertionError, match="starts no process"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(AssertionError, match="opens no network connection"):
        socket.create_connection(("127.0.0.1", 9))
    with socket.socket() as s, pytest.raises(AssertionError, match="opens no network"):
        s.connect(("127.0.0.1", 9))
