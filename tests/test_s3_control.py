"""Control objects (moorage.storage.control) on a directory and on a real S3 store (SeaweedFS),
and the probe a joining replica or a backup reads to prove it sees the cluster's storage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from moorage.errors import StorageUnavailable
from moorage.recovery.join import JoinFailed, _check_s3
from moorage.storage.control import (
    PROBE_TTL,
    ControlStore,
    S3Control,
    conditional_writes_work,
    leave_probe,
    open_control,
    probe_seen,
)
from moorage.storage.s3location import parse


@pytest.fixture(params=["filesystem", "s3"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return str(request.getfixturevalue("s3_url"))
    return str(tmp_path / "storage")


def test_control_store_contract(spec: str) -> None:
    async def run(control: ControlStore) -> None:
        assert await control.get("a/x") is None
        await control.put("a/x", b"one")
        first = await control.get("a/x")
        assert first is not None
        assert first.data == b"one"
        await control.put("a/x", b"two")
        second = await control.get("a/x")
        assert second is not None
        assert second.data == b"two"
        assert second.etag != first.etag
        assert await control.create("a/y", b"new") is True
        assert await control.create("a/y", b"again") is False  # never replaced
        stored = await control.get("a/y")
        assert stored is not None
        assert stored.data == b"new"
        for i in range(5):
            await control.put(f"b/{i}", b"")
        pages = [page async for page in control.names("b/", page=2)]
        assert pages == [["b/0", "b/1"], ["b/2", "b/3"], ["b/4"]]
        assert [n async for page in control.names("a/") for n in page] == ["a/x", "a/y"]
        with pytest.raises(StorageUnavailable, match="larger than 2 bytes"):
            await control.get("a/x", limit=2)
        await control.delete("a/x")
        await control.delete("a/x")  # absent is fine
        assert await control.get("a/x") is None
        assert [n async for page in control.names("nothing/") for n in page] == []

    async def main() -> None:
        control = open_control(spec)
        try:
            await run(control)
        finally:
            await control.aclose()

    asyncio.run(main())


def test_s3_store_honours_conditional_writes(s3_url: str) -> None:
    async def run() -> bool:
        control = S3Control(parse(s3_url))
        try:
            return await conditional_writes_work(control)
        finally:
            await control.aclose()

    assert asyncio.run(run()) is True


def test_s3_failures_say_what_failed(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")

    async def run() -> None:
        control = S3Control(parse(s3_url))
        try:
            await control.put("x", b"1")
        finally:
            await control.aclose()

    with pytest.raises(StorageUnavailable) as info:
        asyncio.run(run())
    message = str(info.value)
    assert "S3 PUT of" in message
    assert "check the endpoint, the credentials" in message


def test_probe_is_found_once_and_only_in_the_same_storage(s3_url: str) -> None:
    async def leave() -> tuple[str, str]:
        control = open_control(s3_url)
        try:
            return await leave_probe(control)
        finally:
            await control.aclose()

    name, content = asyncio.run(leave())
    assert name.startswith("probe/join-")
    elsewhere = s3_url.replace("?", "-other?", 1)  # another prefix of the same bucket
    assert probe_seen(elsewhere, name, content) is False
    assert probe_seen(s3_url, name, "wrong content") is False  # not it: left alone
    assert probe_seen(s3_url, name, content) is True
    name, content = asyncio.run(leave())
    assert probe_seen(s3_url, "probe/../fence.json", content) is False  # never read
    assert probe_seen(s3_url, name, content) is True
    assert probe_seen(s3_url, name, content) is False  # deleted once read

    # join's check: the canonical URL when seen, else what to do
    name, content = asyncio.run(leave())
    assert _check_s3(s3_url, s3_url, name, content) == parse(s3_url).url()
    with pytest.raises(JoinFailed, match="does not see the cluster's blob storage"):
        _check_s3(elsewhere, s3_url, name, content)


def test_filesystem_probe(tmp_path: Path) -> None:
    async def leave() -> tuple[str, str]:
        return await leave_probe(open_control(tmp_path))

    name, content = asyncio.run(leave())
    assert (tmp_path / name).read_text() == content
    assert probe_seen(str(tmp_path), name, content) is True
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("where", ["s3", "filesystem"])
def test_a_new_probe_purges_those_left_long_ago(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A probe nobody read (a join refused because its host looked in another prefix) is
    deleted by a probe written more than PROBE_TTL later; a recent one is kept."""
    spec = str(request.getfixturevalue("s3_url")) if where == "s3" else str(tmp_path)
    now = time.time()

    async def leave(at: float) -> str:
        control = open_control(spec)
        try:
            return (await leave_probe(control, now=at))[0]
        finally:
            await control.aclose()

    async def names() -> list[str]:
        control = open_control(spec)
        try:
            return [n async for page in control.names("probe/") for n in page]
        finally:
            await control.aclose()

    old = asyncio.run(leave(now - PROBE_TTL - 60))
    recent = asyncio.run(leave(now - PROBE_TTL / 2))
    assert asyncio.run(names()) == [old, recent]
    new = asyncio.run(leave(now))
    assert asyncio.run(names()) == [recent, new]
