"""The unit tier: in-process only. Every test here runs with process creation and outgoing
connections refused, so a test that would need a server fails loudly instead of slowly."""

from __future__ import annotations

import socket
import subprocess
from typing import NoReturn

import pytest


def _refused(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError(
        "a unit test starts no process and opens no network connection: "
        "move it to a slower tier (see TIERS in tests/conftest.py)"
    )


@pytest.fixture(autouse=True)
def _in_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refused)
    monkeypatch.setattr(socket.socket, "connect", _refused)
    monkeypatch.setattr(socket.socket, "connect_ex", _refused)
    monkeypatch.setattr(socket, "create_connection", _refused)
