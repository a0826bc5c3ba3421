"""etcd's compaction and defragmentation round (moorage.cluster.etcd_defrag): a real etcd
member, started as a replica starts its own, filled, emptied, and shrunk by the round; and
the round's plan (which members, in which order, or why none) as a table."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from harness.etcd import start_etcd_member

from moorage.cluster.etcd_defrag import Seen, Settings, plan, run_round
from moorage.meta import keys
from moorage.meta.base import Delete, Put
from moorage.meta.etcd import ClientTls, EtcdCluster, MemberStatus
from moorage.meta.etcd_maintenance import member_status

MIB = 1024 * 1024
#: Thresholds made small for the test: 1 MiB free, a quarter of the file; keep 1 revision.
SMALL = Settings(retention=1, min_free=MIB, min_ratio=0.25)


@pytest.fixture(scope="module")
def etcd_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ClientTls]]:
    with start_etcd_member(tmp_path_factory.mktemp("defrag-etcd")) as member:
        yield member


async def _fill_and_empty(store: EtcdCluster, count: int, size: int) -> None:
    names = [keys.ROOT + f"defrag-test/{i:06d}".encode() for i in range(count)]
    value = b"x" * size
    for i in range(0, count, 200):
        await store._txn([], [Put(k, value) for k in names[i : i + 200]])
    for i in range(0, count, 200):
        await store._txn([], [Delete(k) for k in names[i : i + 200]])


def test_round_shrinks_the_database_after_deletes(etcd_member: tuple[str, ClientTls]) -> None:
    url, tls = etcd_member

    async def main() -> tuple[MemberStatus, MemberStatus, str, str]:
        store = EtcdCluster([url], tls=tls)
        try:
            # 12 MB written, then deleted. The check below asks for 8 MiB only: etcd commits
            # its database file in batches (every 100 ms), so the status read just after the
            # last delete may not count the newest writes yet.
            await _fill_and_empty(store, 3000, 4096)
            before = await member_status(url, tls=tls)
            first = await run_round(store, tls, SMALL)
            after = await member_status(url, tls=tls)
            second = await run_round(store, tls, SMALL)
        finally:
            await store.close()
        return before, after, first, second

    before, after, first, second = asyncio.run(main())
    assert before.db_size > 8 * MIB, before
    assert "compacted below revision" in first
    assert "defragmented etcd member" in first, first
    assert after.db_size < before.db_size / 4, (before, after)
    assert after.db_size - after.db_size_in_use < MIB, after
    # Nothing freed since: the next round leaves the member alone and says so.
    assert "nothing to defragment" in second, second
    assert "defragmented" not in second


def test_default_thresholds_leave_a_small_database_alone(
    etcd_member: tuple[str, ClientTls],
) -> None:
    url, tls = etcd_member

    async def main() -> tuple[str, MemberStatus, MemberStatus]:
        store = EtcdCluster([url], tls=tls)
        try:
            await _fill_and_empty(store, 1000, 4096)
            before = await member_status(url, tls=tls)
            said = await run_round(store, tls, Settings(retention=10))
            return said, before, await member_status(url, tls=tls)
        finally:
            await store.close()

    said, before, after = asyncio.run(main())
    assert "nothing to defragment" in said, said
    assert after.db_size >= before.db_size  # not defragmented: under the 128 MiB default


def _status(member_id: int, leader: int, size: int, in_use: int, learner: bool = False) -> Seen:
    status = MemberStatus(member_id, leader, 100, 2, learner, 50, (), size, in_use)
    return Seen(f"r{member_id}", f"https://127.0.0.1:{2300 + member_id}", status)


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        # Every member has freed most of its file: followers first, the leader (1) last.
        (
            [_status(1, 1, 400 * MIB, 100 * MIB), _status(2, 1, 400 * MIB, 100 * MIB),
             _status(3, 1, 400 * MIB, 100 * MIB)],
            ["r2", "r3", "r1"],
        ),
        # Only those over both thresholds (r2: 100 MiB free is under 128 MiB).
        (
            [_status(1, 1, 400 * MIB, 100 * MIB), _status(2, 1, 200 * MIB, 100 * MIB),
             _status(3, 1, 4000 * MIB, 3800 * MIB)],
            ["r1"],
        ),
        # A member that does not answer: nobody, since another one's defrag could cost quorum.
        (
            [_status(1, 1, 400 * MIB, 100 * MIB),
             Seen("r2", "https://127.0.0.1:2302", None, "did not answer")],
            "skipped: etcd member r2 did not answer",
        ),
        (
            [_status(1, 1, 400 * MIB, 100 * MIB), _status(2, 1, 400 * MIB, 100 * MIB, True)],
            "skipped: etcd member r2 is a learner",
        ),
        ([_status(1, 1, 50 * MIB, 40 * MIB)], "nothing to defragment: r1 50.0 MiB, 10.0 MiB free"),
    ],
)  # fmt: skip
def test_plan(seen: list[Seen], expected: list[str] | str) -> None:
    found = plan(seen, Settings())
    if isinstance(expected, str):
        assert isinstance(found, str), found
        assert found.startswith(expected), found
    else:
        assert not isinstance(found, str), found
        assert [m.name for m in found] == expected
