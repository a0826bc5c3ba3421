"""The storage probe a join or a backup looks for: what a replica's answer names is only
ever a probe file under probe/, and a file is deleted only when it is the probe (a hostile
or confused answer once made `moorage join` delete any file the operator could)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moorage.recovery.join import JoinFailed, check_storage
from moorage.storage.control import local_probe_seen

NAME = "probe/join-0123456789abcdef"


class _Answers:
    def __init__(self, probe: dict[str, Any]) -> None:
        self.probe = probe

    def call(self, *args: Any, **kw: Any) -> dict[str, Any]:
        return self.probe


def test_only_the_probe_is_read_and_deleted(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "probe").mkdir()
    for name in (str(victim), "../victim.txt", "probe/../victim.txt", "victim.txt"):
        assert not local_probe_seen(tmp_path / "probe", name, "keep me")
    probe = tmp_path / NAME
    probe.write_text("something else")
    assert not local_probe_seen(tmp_path, NAME, "the content asked for")
    assert probe.read_text() == "something else"  # not the probe asked about: left
    probe.write_text("the content")
    assert local_probe_seen(tmp_path, NAME, "the content")
    assert not probe.exists()
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("path", ["/ABS", "../../victim.txt", "probe/../../victim.txt"])
def test_a_join_never_deletes_what_an_answer_names(tmp_path: Path, path: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    storage = tmp_path / "storage" / "blobs"
    storage.mkdir(parents=True)
    name = str(victim) if path == "/ABS" else path
    answer = {"storage": str(storage), "path": name, "content": "keep me"}
    with pytest.raises(JoinFailed):
        check_storage(_Answers(answer), None)  # type: ignore[arg-type]
    assert victim.read_text() == "keep me"
