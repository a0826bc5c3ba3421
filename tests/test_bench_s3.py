"""`python -m bench.s3` (issue 15 item 5) at a tiny size, so the script cannot rot: Moorage
and Distribution (its `s3` driver) on one SeaweedFS, every workload, pulls through the
registry and by redirect (the script fails if a pull is redirected when it should not be,
or not when it should), and the report written."""

from __future__ import annotations

from pathlib import Path

from bench import s3


def test_s3_bench_measures_both_registries_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "s3.md"
    bench = s3.main(
        ["--blob-mib", "6", "--chunk-mib", "2", "--small", "20", "--manifests", "10",
         "--reps", "1", "--output", str(out)]
    )  # fmt: skip
    for row in s3.ROWS:
        for name in row.pair:
            assert bench.samples[row.key][name][0] > 0, (row.key, name)
    text = out.read_text()
    assert "| pull 6 MiB, by redirect | MB/s | " in text
    assert "| 4 KiB blob pulls, concurrency 16, by redirect | blobs/s | " in text
    assert "| push chunked (2 MiB PATCH), 6 MiB | MB/s | " in text
    assert out.with_suffix(".json").exists()
