"""Fixtures only (and the hook that sorts tests into tiers): real Moorage replicas, each
with its own etcd, on 127.0.0.1.

The harness that runs them is the `harness` package; OCI request helpers are in tests/oci.py
and the conformance data sets in tests/datasets.py. Every process is started by the test and
stopped by pid; data lives under pytest's tmp dirs.
"""

from __future__ import annotations

import compileall
import importlib
import signal
import ssl
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.process import EXTRA_ENV, signal_pids
from harness.replica import Replica
from harness.seaweed import SeaweedFS

# -- test tiers (markers registered in pyproject.toml; `make test-fast` runs `-m unit`) ----------
# A test's tier comes from its file: tests/unit/ is `unit`, a file listed here has the tier
# given, any other file `replica`. A file that mixes tiers is listed under its heaviest.
TIERS = {
    "test_clients.py": "clients",
    "test_s3_cluster.py": "cluster",
    "test_s3_recovery.py": "cluster",
    "test_gc.py": "clients",
    "test_gc_race.py": "cluster",
    "test_token_auth.py": "clients",
    "test_https_clients.py": "clients",
    "test_partition.py": "netns",
    "test_partition_fence.py": "netns",
    "test_chaos.py": "chaos",
    "test_audit.py": "cluster",
    "test_backup_hardening.py": "cluster",
    "test_cluster.py": "cluster",
    "test_etcd_tls.py": "cluster",
    "test_confirm.py": "cluster",
    "test_forged_records.py": "cluster",
    "test_join_tokens.py": "cluster",
    "test_access_tokens.py": "cluster",
    "test_account_recovery.py": "cluster",
    "test_account_races.py": "cluster",
    "test_paste.py": "cluster",
    "test_pki_etcd.py": "cluster",
    "test_recovery.py": "cluster",
    "test_scale_limits.py": "cluster",
    "test_starting.py": "cluster",
    "test_ui_browser.py": "cluster",
    "test_webhooks.py": "cluster",
    "test_ui_signout.py": "cluster",
}
#: The groups that take longest (measured with --durations), longest first; the others follow
#: in collection order. Last ordered by a full run of 2026-12-02 (each group's sum of its tests
#: among the run's 60 longest durations; groups with none there keep their earlier order).
LONGEST_FIRST = (
    "netns",
    "test_s3_cluster.py",
    "chaos",
    "test_paste.py",
    "test_scale_limits.py",
    "test_fuzz.py",
    "test_s3_recovery.py",
    "test_recovery.py",
    "test_ca_rotation.py",
    "test_certs.py",
    "test_starting.py",
    "test_backup_hardening.py",
    "test_cluster.py",
    "test_cli_output.py",
    "test_journal_trim.py",
    "test_account_recovery.py",
    "test_join_tokens.py",
    "test_gc_recovery.py",
    "test_bench_s3.py",
    "test_gc.py",
    "test_crash.py",
    "test_access.py",
    "test_audit.py",
    "test_auth_hardening.py",
    "test_s3_redirect.py",
    "test_webhooks.py",
    "test_gc_race.py",
    "test_s3_fence_recovery.py",
    "test_ui_admin.py",
    "test_ui_browser.py",
    "test_s3_gc.py",
    "test_https.py",
    "test_account_races.py",
    "test_etcd_tls.py",
    "test_confirm.py",
    "test_s3_fuzz.py",
    "test_policies.py",
    "test_fuzz_gc.py",
)
# The replicas and commands the harness starts hash and check passwords with argon2 at its
# minimum cost (moorage/auth/passwords.py): at the pinned cost each check is ~0.27 s of CPU,
# and the suite's replicas make thousands. This process's own hash_password stays pinned
# (test_auth_hardening.py::test_argon2_parameters checks the production parameters).
EXTRA_ENV["MOORAGE_TEST_CHEAP_PASSWORDS"] = "1"

# Every httpx client made without `verify=` builds an SSL context from certifi's bundle
# (~30-60 ms of CPU on the 2-core VM), even for http:// URLs: each `httpx.get` of a poll loop
# (replicas starting, status waits) paid it. The test processes share one such context
# (httpx 0.28.1 is pinned; the function it calls is replaced, not its behaviour).
_TRANSPORTS = importlib.import_module("httpx._transports.default")
_CREATE = "create_ssl_context"
_create_ssl_context: Callable[..., ssl.SSLContext] = getattr(_TRANSPORTS, _CREATE)
_default_ssl_context: list[ssl.SSLContext] = []


def _shared_ssl_context(
    verify: ssl.SSLContext | str | bool = True, cert: Any = None, trust_env: bool = True
) -> ssl.SSLContext:
    if verify is not True or cert is not None:
        return _create_ssl_context(verify, cert, trust_env)
    if not _default_ssl_context:
        _default_ssl_context.append(_create_ssl_context(True, None, trust_env))
    return _default_ssl_context[0]


setattr(_TRANSPORTS, _CREATE, _shared_ssl_context)

#: Fixtures that start processes: a unit test that asks for one is an error.
PROCESS_FIXTURES = frozenset({"registry", "client", "fresh_replica", "seaweed", "s3_url"})


def pytest_sessionstart(session: pytest.Session) -> None:
    """Byte-compile the packages every `moorage` process the tests start imports: with
    PYTHONDONTWRITEBYTECODE set (as on the development machines), each of the hundreds of
    processes would otherwise compile the whole source tree again (~0.1 s of CPU each)."""
    import moorage

    root = Path(__file__).resolve().parent.parent
    for package in (Path(moorage.__file__).parent, root / "harness", root / "chaos"):
        if package.is_dir():
            compileall.compile_dir(package, quiet=1)
    if not hasattr(session.config, "workerinput"):  # once, before xdist starts its workers
        _cache_rewritten_modules(session.config, root / "tests")


def _cache_rewritten_modules(config: pytest.Config, tests: Path) -> None:
    """Write pytest's assertion-rewritten pycs of the test modules and of the plugins'
    packages (hypothesis, anyio: pytest rewrites a plugin's whole distribution) once.

    With PYTHONDONTWRITEBYTECODE set nothing writes them, and every pytest-xdist worker
    rewrote ~220 modules while collecting (~11 s of CPU each); a worker reads a cached pyc
    whatever that setting says. pytest 9.2.0 is pinned: its rewrite functions are used as
    the import hook calls them."""
    import hypothesis.strategies  # noqa: F401  (the plugin modules the fuzz tests import)
    from _pytest.assertion import rewrite

    if config.getoption("assertmode") != "rewrite":
        return
    sources = {*tests.rglob("test_*.py"), *tests.rglob("conftest.py")}
    for module in list(sys.modules.values()):
        if isinstance(getattr(module, "__loader__", None), rewrite.AssertionRewritingHook):
            sources.add(Path(module.__file__ or ""))
    state = config.stash[rewrite.assertstate_key]
    for fn in sorted(p for p in sources if p.suffix == ".py"):
        pyc = rewrite.get_cache_dir(fn) / (fn.name[:-3] + rewrite.PYC_TAIL)
        if rewrite._read_pyc(fn, pyc) is None and rewrite.try_makedirs(pyc.parent):
            source_hash, co = rewrite._rewrite_test(fn, config)
            rewrite._write_pyc(state, co, source_hash, pyc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unit_dir = Path(__file__).parent / "unit"
    for item in items:
        path = Path(str(item.path))
        if unit_dir in path.parents:
            tier = "unit"
            wanted = PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            if wanted:
                raise pytest.UsageError(
                    f"{item.nodeid}: a unit test may not use {', '.join(sorted(wanted))} "
                    "(they start processes); move it out of tests/unit/"
                )
        else:
            tier = TIERS.get(path.name, "replica")
        item.add_marker(getattr(pytest.mark, tier))
    # Longest groups first: xdist hands groups out in this order, so the workers end
    # together instead of one waiting on a long module started last.
    order = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(xdist_group(item.nodeid).rsplit("/", 1)[-1], len(order)))


#: The chaos cases that build their cluster in network namespaces (chaos.scenarios.run_scenario
#: makes a NetLab for these scenarios on a storage directory); the others run on loopback.
NETNS_SCENARIOS = ("netcut", "majority-loss")


def xdist_group(nodeid: str) -> str:
    """The group of tests one pytest-xdist worker runs whole: a module (its module-scoped
    cluster starts once), "netns" for the tests that make bridges and namespaces of the root
    namespace (one at a time: the partition tests and the chaos cases of NETNS_SCENARIOS),
    or "chaos" for the other chaos cases (on loopback; a group of their own, so that the
    longest two groups can run side by side)."""
    module, _, rest = nodeid.partition("::")
    tier = TIERS.get(module.rsplit("/", 1)[-1])
    if tier == "netns":
        return "netns"
    if tier == "chaos":
        case = rest.partition("[")[2].rstrip("]")
        namespaced = case.rsplit("-", 1)[0] in NETNS_SCENARIOS
        return "netns" if namespaced else "chaos"
    return module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs `-n 4`: whole groups (xdist_group above) to a worker, in the order
    collected. (xdist's own `loadgroup` marks do nothing with pytest 9, whose node ids
    xdist can no longer suffix.)"""
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    # In our order (LONGEST_FIRST), not xdist's default of the groups with most tests first,
    # which left the longest single tests (a CA rotation, the paste chains) for the end.
    config.option.loadscopereorder = False

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return GroupScheduling(config, log)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica shared by the tests that do not restart or kill it."""
    r = Replica(tmp_path_factory.mktemp("shared") / "data")
    r.start()
    yield r
    r.stop()


@pytest.fixture
def client(registry: Replica) -> Iterator[httpx.Client]:
    with registry.client() as c:
        yield c


@pytest.fixture
def fresh_replica(tmp_path: Path) -> Iterator[Replica]:
    """A replica of the test's own, for tests that restart or kill it."""
    r = Replica(tmp_path / "data")
    yield r
    r.kill() if r.proc is not None and r.proc.poll() is None else r.stop()
    signal_pids(list(r.pids().values()), signal.SIGKILL)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS server (S3 gateway on 127.0.0.1) per worker, started on first use; tests
    share its bucket and keep apart by key prefix (`s3_url`)."""
    store = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    store.start()
    yield store
    store.stop()


@pytest.fixture
def s3_url(
    seaweed: SeaweedFS, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """`--storage` for S3 blob storage under a prefix of this test's own; the store's
    credentials are in this process's environment (as the AWS tools read them)."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)[:60]
    return seaweed.storage_url(f"t/{name}-{uuid.uuid4().hex[:8]}")


@contextmanager
def s3_replica(seaweed: SeaweedFS, data_dir: Path, storage: str) -> Iterator[Replica]:
    """One replica whose blob storage is `storage` (an S3 `--storage` value on `seaweed`),
    started and stopped around the block; the store's credentials are in its environment and
    in this process's meanwhile (for the driver a test lists the bucket with). The one-replica
    S3 modules' module-scoped fixture."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in seaweed.env().items():
            mp.setenv(name, value)
        r = Replica(data_dir, storage=storage)
        try:
            r.start()
            yield r
        finally:
            r.stop()  # a replica that never became healthy too
