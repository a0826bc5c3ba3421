"""The replica process (`moorage run`) leaves the HTTP layer to its API workers."""

from __future__ import annotations

import subprocess
import sys


def test_the_replica_process_does_not_import_prometheus_client() -> None:
    """prometheus_client picks its multiprocess mode when first imported: imported in the
    replica process before PROMETHEUS_MULTIPROC_DIR is set, the forked workers inherit the
    single-process mode and /metrics answers an empty document (tests/test_smoke.py's
    test_metrics failed so when moorage.server imported the API at module level)."""
    code = (
        "import sys, moorage.cli.main, moorage.server.process\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'starlette') or m.startswith(('moorage.api', "
        "'moorage.server.worker'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
