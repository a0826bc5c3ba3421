"""Accounts, access tokens and repository policies survive every recovery path (issues #9
and #10): the changes made after a backup (a robot token created, another revoked, a user
disabled, a grant removed, a team member added; a policy set, one setting unset, a whole
policy unset) are journaled before they are answered, so they come back after an emergency
repair whose survivor never learned of them, and after a restore from the backup once every
data directory is lost; nothing revoked or unset comes back to life."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import AUTH, Cluster, Node, moorage, push_image
from tests.oci import OCI_MANIFEST

PASSWORD = "account-recovery-pw"
MANIFEST = "/v2/acme/app/manifests/v1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.shutdown()


def admin(node: Node, path: str, body: dict[str, Any] | None = None) -> Any:
    """An admin API call (POST with a body, GET without); its JSON answer."""
    with node.client() as c:
        r = c.post(path, json=body) if body is not None else c.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def pull_status(node: Node, who: tuple[str, str]) -> int:
    with httpx.Client(base_url=node.url, auth=who, timeout=30) as c:
        return c.get(MANIFEST, headers={"Accept": OCI_MANIFEST}).status_code


def robot(node: Node, name: str) -> tuple[str, str]:
    doc = admin(node, "/api/v0/tokens", {"scopes": ["repository:acme/app:pull"], "robot": name})
    return doc["username"], doc["token"]


def token_id(token: tuple[str, str]) -> str:
    return token[1].split("_")[1]


def assert_accounts_after_the_changes(
    node: Node, kept: tuple[str, str], revoked: tuple[str, str], new: tuple[str, str]
) -> None:
    """What every change made after the backup left, as a client sees it."""
    assert pull_status(node, new) == 200  # created after the backup
    assert pull_status(node, kept) == 200  # in the backup, untouched
    assert pull_status(node, revoked) == 401  # in the backup, revoked after it
    assert pull_status(node, ("carol", PASSWORD)) == 401  # disabled after the backup
    assert pull_status(node, ("alice", PASSWORD)) == 403  # her grant removed after it
    assert pull_status(node, ("bob", PASSWORD)) == 200  # in acme/devs since the backup
    grants = admin(node, "/api/v0/grants?on=acme/app")["grants"]
    assert {"on": "acme/app", "to": "user:alice", "role": "write"} not in grants
    (devs,) = admin(node, "/api/v0/teams?org=acme")["teams"]
    assert devs["members"] == ["bob"]
    users = {u["name"]: u for u in admin(node, "/api/v0/users")["users"]}
    assert users["carol"]["disabled"] is True
    tokens = {t["id"] for t in admin(node, "/api/v0/tokens")["tokens"]}
    assert tokens == {token_id(kept), token_id(new)}


def policy_of(node: Node, target: str) -> dict[str, Any] | None:
    policy: dict[str, Any] | None = admin(node, f"/api/v0/policies/show?on={target}")["policy"]
    return policy


def assert_policies_after_the_changes(node: Node) -> None:
    acme = policy_of(node, "acme")
    assert acme is not None
    assert acme["quota"] == 2 * 1024**3  # set after the backup
    assert not acme.get("immutable_tags")  # unset after the backup
    app = policy_of(node, "acme/app")
    assert app is not None
    assert app["keep_last"] == 3  # set after the backup
    assert policy_of(node, "old") is None  # in the backup, unset whole after it
    targets = [p["target"] for p in admin(node, "/api/v0/policies")["policies"]]
    assert sorted(targets) == ["acme", "acme/app"]


def test_account_changes_after_a_backup_survive_emergency_repair_and_restore(
    cluster: Cluster,
) -> None:
    r0 = cluster.install()
    for name in ("alice", "bob", "carol"):
        admin(r0, "/api/v0/users", {"name": name, "password": PASSWORD})
    admin(r0, "/api/v0/orgs", {"name": "acme"})
    admin(r0, "/api/v0/teams", {"org": "acme", "team": "devs"})
    for on, to, role in [
        ("acme", "team:acme/devs", "read"),
        ("acme/app", "user:alice", "write"),
        ("acme", "user:carol", "read"),
    ]:
        admin(r0, "/api/v0/grants", {"role": role, "on": on, "to": to})
    push_image(r0, "acme/app", "v1", "accounts")
    kept, revoked = robot(r0, "ci"), robot(r0, "old")
    admin(r0, "/api/v0/policies", {"on": "acme", "immutable_tags": ["v*"]})
    admin(r0, "/api/v0/policies", {"on": "old", "quota": "1GiB"})
    assert pull_status(r0, revoked) == 200
    assert pull_status(r0, ("alice", PASSWORD)) == 200
    assert pull_status(r0, ("bob", PASSWORD)) == 403

    # The backup holds the accounts and both tokens (hashes only), and says so.
    b1 = cluster.root / "b1.tar"
    made = moorage("backup", "--existing", r0.url, "--out", str(b1), "--json")
    counts = json.loads(made.stdout)["counts"]
    assert (counts["users"], counts["access_tokens"], counts["grants"]) == (4, 2, 3)
    assert (counts["orgs"], counts["teams"]) == (1, 1)
    assert revoked[1].encode() not in b1.read_bytes()
    verified = json.loads(moorage("backup", "verify", str(b1), "--json").stdout)
    assert verified["ok"] is True
    assert verified["counts"]["access_tokens"] == 2

    # What etcd's force-new-cluster would keep of a survivor that learned nothing more.
    moorage("stop", "--data-dir", str(r0.data_dir))
    stale = cluster.root / "etcd-at-backup"
    shutil.copytree(r0.data_dir / "etcd", stale)
    moorage("start", "--data-dir", str(r0.data_dir))

    # The changes after the backup, each acknowledged.
    new = robot(r0, "new")
    admin(r0, "/api/v0/tokens/revoke", {"id": token_id(revoked)})
    admin(r0, "/api/v0/users/disable", {"name": "carol"})
    admin(r0, "/api/v0/grants/revoke", {"on": "acme/app", "to": "user:alice"})
    admin(r0, "/api/v0/teams/add-member", {"org": "acme", "team": "devs", "user": "bob"})
    admin(r0, "/api/v0/policies", {"on": "acme", "quota": "2GiB"})
    admin(r0, "/api/v0/policies/unset", {"on": "acme", "settings": ["immutable_tags"]})
    admin(r0, "/api/v0/policies", {"on": "acme/app", "keep_last": 3})
    admin(r0, "/api/v0/policies/unset", {"on": "old"})
    assert_accounts_after_the_changes(r0, kept, revoked, new)
    assert_policies_after_the_changes(r0)

    # Quorum lost, the survivor behind: emergency repair replays the account changes.
    moorage("stop", "--data-dir", str(r0.data_dir))
    shutil.rmtree(r0.data_dir / "etcd")
    shutil.copytree(stale, r0.data_dir / "etcd")
    out = moorage("emergency-repair", "--data-dir", str(r0.data_dir), "--yes", "--json")
    repair = json.loads(out.stdout)
    planned = repair["journal_replay"]["changes"]  # what its plan printed
    assert f"accounts: delete token {token_id(revoked)}" in planned
    assert "accounts: set user carol" in planned
    assert "accounts: set policy acme/app" in planned
    assert "accounts: delete policy old" in planned
    assert repair["result"]["journal_replayed"] == {"applied": 9, "unrecoverable": []}
    assert_accounts_after_the_changes(r0, kept, revoked, new)
    assert_policies_after_the_changes(r0)

    # Everything lost but blob storage: restore the backup; the journal brings the rest.
    moorage("destroy", "--yes", "--data-dir", str(r0.data_dir))
    fresh = Node(cluster.root, "fresh")
    doc = json.loads(
        moorage(
            "restore", "--yes", "--in", str(b1), *fresh.flags(),
            "--storage", str(cluster.storage), "--json",
        ).stdout
    )  # fmt: skip
    cluster.nodes.append(fresh)
    assert doc["counts"]["access_tokens"] == 2
    assert doc["journal_replayed"]["unrecoverable"] == []
    assert doc["journal_replayed"]["applied"] == 9
    assert_accounts_after_the_changes(fresh, kept, revoked, new)
    assert_policies_after_the_changes(fresh)
    # Bearer tokens come from new signing keys; the admin's password still works.
    with httpx.Client(base_url=fresh.url, auth=AUTH, timeout=30) as c:
        token = c.get("/auth/token", params={"scope": "repository:acme/app:pull"})
    assert token.status_code == 200, token.text
