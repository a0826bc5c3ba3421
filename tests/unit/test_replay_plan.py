"""Planning a journal replay (restore, emergency repair) keeps only the entries to replay:
a journal of months that no backup ever trimmed is streamed, never held in memory whole."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from moorage.recovery.journal_replay import plan_replay

ENTRIES = 100_000


def test_a_long_journal_is_planned_in_bounded_memory(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    for part in range(4):
        with open(journal / f"{part:012d}.jsonl", "w") as fh:
            for i in range(part * ENTRIES // 4, (part + 1) * ENTRIES // 4):
                entry = {"c": "c1", "e": 1, "r": i + 1, "op": "untag", "repo": "app/one"}
                fh.write(json.dumps({**entry, "tag": f"t{i}"}) + "\n")
        with open(journal / f"{part:012d}.jsonl", "a") as fh:  # another cluster's, and junk
            fh.write(json.dumps({"c": "c2", "e": 1, "r": 1, "op": "untag"}) + "\n")
            fh.write(json.dumps({"c": "c1", "e": 1, "r": ENTRIES + part + 1, "op": "x"}) + "\n")
    size = sum(f.stat().st_size for f in journal.iterdir())
    tracemalloc.start()
    try:
        plan = plan_replay(tmp_path, "c1", (1, ENTRIES - 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e["r"] for e in plan.entries] == list(range(ENTRIES - 9, ENTRIES + 1))
    assert len(plan.rejected) == 4  # the unknown operations above the plan's start
    # Every entry held at once would be several times the files' size (~8 MB): a few
    # thousand entries at a time are a few MB.
    assert peak < size / 2, (peak, size)
