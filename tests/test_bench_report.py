"""The benchmark's report: the cluster table's 1, 3 and 5 replica rows, and the figures of
the commands too long for every `make bench` (scale, etcd size) shown beside its table."""

from __future__ import annotations

from pathlib import Path

from bench import disk
from bench.report import Results, beside, cluster_table, markdown
from harness.process import REPO_ROOT


def test_cluster_table_has_a_row_per_cluster_size_with_its_ratio_to_one_replica() -> None:
    results = Results()
    results.cluster["push ms, 1 replica"] = [10.0] * 99 + [40.0]
    results.cluster["push ms, 3 replicas"] = [12.0] * 99 + [60.0]
    results.cluster["push ms, 5 replicas"] = [15.0] * 99 + [80.0]
    rows = cluster_table(results).splitlines()
    p50 = [r for r in rows if "latency p50" in r]
    assert [r.split(" | ")[2] for r in p50] == ["10.0", "12.0 (1.20x of 1 replica)",
                                                "15.0 (1.50x of 1 replica)"]  # fmt: skip
    assert any("p99, concurrency 16, 5 replicas round-robin | ms | 15.0" in r for r in rows)


def test_the_report_shows_the_scale_and_etcd_size_results_beside_its_table(
    tmp_path: Path,
) -> None:
    (tmp_path / "scale.md").write_text(
        "# Moorage at scale\n\n- date: 2026-12-01\n\n## Paged\n\n| tags | ms |\n|---:|---:|\n"
        "| 10000 | 13.1 |\n| 100000 | 13.9 |\n"
    )
    parts = beside(tmp_path)
    assert "### `make bench-scale` (bench/results/scale.md, as last run)" in parts
    assert "| 100000 | 13.9 |" in parts
    assert "### Paged" in parts  # its headings sit below this section's
    assert "no bench/results/etcd-size.md yet: run `python -m bench.etcd_size`" in parts
    text = markdown(Results(), REPO_ROOT, ["- plan: test"], tmp_path)
    assert "## Beside this run: scale and etcd size" in text
    assert "- machine: " in text
    assert "| 10000 | 13.1 |" in text


def test_the_disk_ceiling_writes_real_files_durably_and_is_reported(tmp_path: Path) -> None:
    figures = disk.measure(tmp_path / "disk", 8 * 1024 * 1024 + 4096, 40, 4096)
    sequential = figures["fsynced write of a new file, MB/s"]
    small = figures["durable 4 KiB file installs/s, 16 in parallel"]
    assert sequential > 0
    assert small > 0
    # the files are really there, whole: two sequential runs, 40 installs per run
    assert (tmp_path / "disk" / "sequential-1").stat().st_size == 8 * 1024 * 1024 + 4096
    installed = sorted((tmp_path / "disk" / "small-0" / "final").iterdir())
    assert len(installed) == 40
    assert all(p.stat().st_size == 4096 for p in installed)
    assert not list((tmp_path / "disk" / "small-0" / "staging").iterdir())
    results = Results()
    results.disk = figures
    text = markdown(results, REPO_ROOT, ["- plan: test"], tmp_path)
    assert "## Disk ceiling" in text
    assert f"| fsynced write of a new file, MB/s | {sequential:,.0f} |" in text
