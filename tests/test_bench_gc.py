"""`python -m bench.gc` (issue 14 item 8) at a tiny size, so the script cannot rot: it
fills a replica straight through etcd and blob storage, collects (dry runs, a real run,
a real run while pushes go on) and checks that each run frees exactly the garbage."""

from __future__ import annotations

from pathlib import Path

from bench import gc


def test_gc_bench_frees_exactly_the_garbage_and_reports_each_run(tmp_path: Path) -> None:
    out = tmp_path / "gc.md"
    bench = gc.main(
        ["--blobs", "200", "--manifests", "60", "--repos", "6", "--push-seconds", "1",
         "--output", str(out)]
    )  # fmt: skip
    runs = {row.what: row for row in bench.rows}
    assert list(runs) == [
        "pushes alone", "dry run", "dry run, untagged", "real run", "real run while pushing",
    ]  # fmt: skip
    assert runs["dry run, untagged"].manifests == 30
    for what in ("dry run", "real run", "real run while pushing"):
        assert runs[what].blobs == 100
        assert runs[what].worker_rss > 0
        assert runs[what].etcd_rss > 0
    assert runs["pushes alone"].pushes
    assert runs["real run while pushing"].pushes
    # Every file in use is left: 60 layers, 60 manifests, 6 configs, and what was pushed.
    assert bench.files_left >= 126
    text = out.read_text()
    assert "| real run while pushing | " in text
    assert "files left in blob storage after the last run" in text
