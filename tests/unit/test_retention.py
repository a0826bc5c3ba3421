"""Which tags a retention rule keeps (registry/retention.py `doomed_tags`), as a table, and the
policy record's validation and sizes (meta/policy_records.py)."""

from __future__ import annotations

import pytest

from moorage.errors import RecordCorrupt
from moorage.meta.policy_records import SETTINGS, PolicyRecord, parse_size
from moorage.meta.records import TagRecord
from moorage.registry.retention import DAY, doomed_tags

DIGEST = "sha256:" + "a" * 64
NOW = 1_000_000_000.0
MT = "application/vnd.oci.image.manifest.v1+json"


def tags(*pushed: tuple[str, float | None]) -> list[tuple[str, TagRecord, int]]:
    """(name, push time) in push order; revisions follow that order."""
    return [(n, TagRecord(DIGEST, MT, 1, at), rev) for rev, (n, at) in enumerate(pushed, 1)]


CASES = [
    # keep the last 2 by push time (the revision breaks a tie, unknown times are oldest)
    (dict(keep_last=2), [("a", 1.0), ("b", 2.0), ("c", 3.0)], set(), ["a"]),
    (dict(keep_last=1), [("old", None), ("x", 5.0), ("y", 5.0)], set(), ["old", "x"]),
    (dict(keep_last=0), [("a", 1.0)], set(), ["a"]),
    # keep tags pushed within 3 days; an unknown push time is not within
    (
        dict(keep_days=3),
        [("old", NOW - 4 * DAY), ("new", NOW - 2 * DAY), ("x", None)],
        set(),
        ["x", "old"],
    ),
    # patterns only: every other tag goes
    (dict(keep_tags=("release-*",)), [("release-1", 1.0), ("dev", 2.0)], set(), ["dev"]),
    # rules add up, and immutable tags always stay
    (
        dict(keep_last=1, keep_tags=("v?",)),
        [("v1", 1.0), ("dev1", 2.0), ("stable", 3.0), ("dev2", 4.0)],
        {"stable"},
        ["dev1"],
    ),
]


@pytest.mark.parametrize(("rule", "pushed", "immutable", "doomed"), CASES)
def test_doomed_tags(
    rule: dict[str, object],
    pushed: list[tuple[str, float | None]],
    immutable: set[str],
    doomed: list[str],
) -> None:
    record = PolicyRecord("acme", **rule)  # type: ignore[arg-type]
    got = doomed_tags("acme/app", tags(*pushed), record, immutable, NOW)
    assert [d.tag for d in got] == doomed
    assert all(d.rule == "acme" for d in got)


def test_policy_records_refuse_what_they_cannot_hold() -> None:
    with pytest.raises(RecordCorrupt, match="kept per namespace"):
        PolicyRecord("acme/app", quota=10)
    with pytest.raises(RecordCorrupt, match="invalid pattern"):
        PolicyRecord("acme", immutable_tags=("v 1",))
    with pytest.raises(RecordCorrupt, match="keep-last"):
        PolicyRecord("acme", keep_last=-1)
    record = PolicyRecord("acme", immutable_tags=("v*",), quota=5, allow_sparse=True)
    assert PolicyRecord.decode(record.encode()) == record
    assert record.without(("quota",)).quota is None
    assert PolicyRecord("acme").empty


@pytest.mark.parametrize(
    ("text", "size"),
    [("10GiB", 10 * 1024**3), ("500MB", 500_000_000), ("1.5k", 1500), ("42", 42), (7, 7)],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1", "10XB", "", None, True])
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(RecordCorrupt, match=r"e\.g\. 10GiB"):
        parse_size(text)


def test_a_policy_change_keeps_one_that_came_first() -> None:
    """Another replica sets the quota between this change's read and its write: the write
    fails at the revision read, the change is applied again to what the other wrote, and
    both settings stay (Policies.change)."""
    import asyncio
    import dataclasses
    from collections.abc import Sequence

    from moorage.meta import keys
    from moorage.meta.memory import MemoryMetaStore
    from moorage.meta.ops import Guard, Op, Put
    from moorage.meta.policies import Policies

    class Racing(MemoryMetaStore):
        raced = False

        async def _txn(self, guards: Sequence[Guard], ops: Sequence[Op]) -> bool:
            if not self.raced:  # the other replica's write commits first
                self.raced = True
                other = PolicyRecord("acme", quota=1000)
                await super()._txn([], [Put(keys.policy("acme"), other.encode())])
            return await super()._txn(guards, ops)

    async def run() -> None:
        store = Racing()
        policies = Policies(store)
        applied: list[PolicyRecord | None] = []

        def with_rule(old: PolicyRecord | None) -> PolicyRecord:
            applied.append(old)
            return dataclasses.replace(old or PolicyRecord("acme"), immutable_tags=("v*",))

        written = await policies.change("acme", with_rule)
        assert store.raced
        assert applied[0] is None
        assert applied[1] is not None
        stored = await policies.get("acme")
        assert stored == written
        assert stored is not None
        assert stored.quota == 1000
        assert stored.immutable_tags == ("v*",)
        gone = await policies.change("acme", lambda o: None if o is None else o.without(SETTINGS))
        assert gone is not None
        assert gone.empty
        assert await policies.get("acme") is None
        assert await policies.change("nobody", lambda o: o) is None

    asyncio.run(run())


def test_a_plan_lists_the_first_tags_and_counts_them_all() -> None:
    """42,000 doomed tags were a 6.9 MB answer built whole in memory: the plan goes a
    repository at a time and lists the first LISTED tags, with the count of all."""
    import asyncio
    from types import SimpleNamespace
    from typing import Any, cast

    from moorage.registry import retention as rt

    rule = PolicyRecord("acme", keep_last=1)
    names = [f"acme/r{i}" for i in range(3)]
    per_repo = rt.LISTED  # each repository keeps 1 of LISTED + 1 tags
    read: list[str] = []

    class Policies:
        async def repositories(self, target: str) -> list[str]:
            return names

        async def applicable(self, repo: str) -> Any:
            return SimpleNamespace(retention=rule, immutable_rule=lambda name: False)

        async def tags(self, repo: str) -> list[tuple[str, TagRecord, int]]:
            read.append(repo)
            return tags(*[(f"t{i}", float(i)) for i in range(per_repo + 1)])

    manifests = SimpleNamespace(policies=Policies())
    plan = asyncio.run(rt.Retention(cast(Any, manifests), cast(Any, None)).plan("acme"))
    assert plan.count == 3 * per_repo
    assert len(plan.first) == rt.LISTED
    assert plan.truncated
    assert read == names
    assert plan.docs()[0] == {
        "repo": "acme/r0",
        "tag": "t0",
        "digest": DIGEST,
        "pushed_at": 0.0,
        "rule": "acme",
    }
