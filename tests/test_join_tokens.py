"""Join tokens on a real cluster (issue 12 item 4, DESIGN.md §7): a 3-replica cluster formed
with tokens only (no admin password on the joiners), the CA pinned before the token leaves
the host, and used, expired, revoked and concurrently reused tokens refused; etcd (read
with a replica's own TLS material) never holds a token in clear."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from moorage.pki.files import TlsDir
from tests.cluster import AUTH, Cluster, Node, moorage
from tests.test_pki_etcd import etcdctl

#: The joiners' environment: a wrong admin password, so that only the token can work.
NO_PASSWORD = {"MOORAGE_PASSWORD": "not-the-admin-password"}
WRONG_CA = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, Any]]]:
    """One installed replica, and install's JSON (it carries a fresh token)."""
    c = Cluster(tmp_path_factory.mktemp("tokens"))
    try:
        node = c.new_node()
        out = c.cli(
            "install", *node.flags(), "--storage", str(c.storage),
            "--admin-password", AUTH[1], "--json",
        )  # fmt: skip
        doc = json.loads(out.stdout)
        node.replica_id = doc["replica_id"]
        c.nodes.append(node)
        yield c, doc
    finally:
        c.shutdown()


def token_join(c: Cluster, node: Node, token: str, fingerprint: str) -> Any:
    return moorage(
        "join", "--existing", c.nodes[0].url, *node.flags(), "--token", token,
        "--ca-fingerprint", fingerprint, "--json", check=False, env=NO_PASSWORD,
    )  # fmt: skip


def admin(c: Cluster, *args: str) -> Any:
    out = moorage(*args, "--existing", c.nodes[0].url, "--json")
    return json.loads(out.stdout)


def token_ids(c: Cluster) -> set[str]:
    return {t["id"] for t in admin(c, "join-token", "list")["tokens"]}


def probe(c: Cluster, token: str) -> httpx.Response:
    """The first call of a token join (the storage probe), as the CLI makes it."""
    headers = {"Authorization": f"MoorageJoin {token}", "Moorage-Join-Secret": "ab" * 32}
    return httpx.post(
        f"{c.nodes[0].url}/api/v0/cluster/storage-probe", json={}, headers=headers, timeout=30
    )


def assert_refused(resp: httpx.Response, words: str) -> None:
    assert resp.status_code == 401, resp.text
    error = resp.json()["errors"][0]  # the OCI error envelope
    assert error["code"] == "UNAUTHORIZED"
    assert words in error["message"], error
    assert "join-token create" in error["message"], error


def test_install_prints_the_join_command_and_tokens_form_a_cluster(
    cluster: tuple[Cluster, dict[str, Any]],
) -> None:
    c, doc = cluster
    token, fingerprint = doc["join_token"], doc["ca_fingerprint"]
    assert doc["join_command"].startswith(
        f"moorage join --existing {c.nodes[0].url} --token {token} --ca-fingerprint {fingerprint}"
    )
    token_id = hashlib.sha256(token.encode()).hexdigest()[:12]
    assert token_id in token_ids(c)

    # A wrong fingerprint: refused before the token leaves the host (it is still unused).
    second = c.new_node()
    out = token_join(c, second, token, WRONG_CA)
    assert out.returncode == 1, out.stderr
    assert "not the expected" in out.stderr
    assert "join token was not sent" in out.stderr
    assert not second.data_dir.exists()
    assert token_id in token_ids(c)

    # The right one: joins without the admin password; the token is used up.
    out = token_join(c, second, token, fingerprint)
    assert out.returncode == 0, out.stderr
    second.replica_id = json.loads(out.stdout)["replica_id"]
    c.nodes.append(second)
    assert token_id not in token_ids(c)

    # Used: refused, saying what to do.
    third = c.new_node()
    out = token_join(c, third, token, fingerprint)
    assert out.returncode == 1
    assert "used already" in out.stderr, out.stderr
    assert "join-token create" in out.stderr, out.stderr
    assert_refused(probe(c, token), "used already")

    # A token from `join-token create` makes the third replica.
    made = admin(c, "join-token", "create", "--ttl", "10m")
    assert made["ca_fingerprint"] == fingerprint
    assert made["token"] in made["join_command"]
    out = token_join(c, third, made["token"], fingerprint)
    assert out.returncode == 0, out.stderr
    third.replica_id = json.loads(out.stdout)["replica_id"]
    c.nodes.append(third)
    status = c.wait_status("healthy")
    assert sorted(r["id"] for r in status["replicas"]) == sorted(n.replica_id for n in c.nodes)
    assert not any(r["learner"] for r in status["replicas"]), status


def test_expired_and_revoked_tokens_are_refused(cluster: tuple[Cluster, dict[str, Any]]) -> None:
    c, _ = cluster
    short = admin(c, "join-token", "create", "--ttl", "1s")
    by_token = admin(c, "join-token", "create")
    by_id = admin(c, "join-token", "create")
    assert admin(c, "join-token", "revoke", by_token["token"]) == {"revoked": True}
    assert admin(c, "join-token", "revoke", by_id["id"]) == {"revoked": True}
    assert {by_token["id"], by_id["id"]}.isdisjoint(token_ids(c))
    for doc in (by_token, by_id):
        assert_refused(probe(c, doc["token"]), "unknown, expired, revoked or used")
    while time.time() <= short["expires_at"]:
        time.sleep(0.2)
    resp = probe(c, short["token"])
    assert resp.status_code == 401
    assert "expired" in resp.json()["errors"][0]["message"]
    # the refusals are in the audit log of the replica that refused them
    assert "join token refused" in c.nodes[0].log_tail(200)
    # the CLI says what to do
    out = token_join(c, c.new_node(), by_id["token"], short["ca_fingerprint"])
    assert out.returncode == 1, out.stderr
    assert "join-token create" in out.stderr, out.stderr
    # a ttl over the bound, an unknown token to revoke
    out = moorage("join-token", "create", "--existing", c.nodes[0].url, "--ttl", "25h", check=False)
    assert out.returncode == 2, out.stderr
    assert "24 h" in out.stderr, out.stderr
    out = moorage("join-token", "revoke", "--existing", c.nodes[0].url, by_id["token"], check=False)
    assert out.returncode == 1, out.stderr
    assert "no such unused join token" in out.stderr, out.stderr


def test_a_token_grants_only_its_join(cluster: tuple[Cluster, dict[str, Any]]) -> None:
    c, _ = cluster
    made = admin(c, "join-token", "create")
    headers = {"Authorization": f"MoorageJoin {made['token']}", "Moorage-Join-Secret": "cd" * 32}
    url = c.nodes[0].url
    # admin-only calls do not take a token
    for path in ("/api/v0/cluster/remove", "/api/v0/join-tokens"):
        resp = httpx.post(f"{url}{path}", json={}, headers=headers, timeout=30)
        assert resp.status_code == 401, (path, resp.text)
    # nor do the steps after the join call before the token was used
    resp = httpx.get(f"{url}/api/v0/cluster/status", headers=headers, timeout=30)
    assert resp.status_code == 403, resp.text
    body = {
        "replica_id": "0123456789ab", "peer_url": "https://127.0.0.1:1", "http_addr": "127.0.0.1:2",
        "csr": "x", "unsafe": True,
    }  # fmt: skip
    resp = httpx.post(f"{url}/api/v0/cluster/join", json=body, headers=headers, timeout=30)
    assert resp.status_code == 403, resp.text
    assert "unsafe" in resp.text, resp.text
    assert made["id"] in token_ids(c)  # none of it used the token up


def test_etcd_holds_only_hashes(cluster: tuple[Cluster, dict[str, Any]]) -> None:
    c, doc = cluster
    made = admin(c, "join-token", "create")
    node = c.nodes[0]
    tls = TlsDir(node.data_dir)
    url = f"https://127.0.0.1:{node.etcd_client_port}"
    out = etcdctl(url, "get", "", "--from-key", "-w", "json", tls=tls)  # base64: binary-safe
    assert out.returncode == 0, out.stderr
    kvs = json.loads(out.stdout)["kvs"]
    dump = b"\n".join(
        base64.b64decode(kv["key"]) + b" " + base64.b64decode(kv.get("value", "")) for kv in kvs
    )
    digest = hashlib.sha256(made["token"].encode()).hexdigest()
    assert f"/moorage-join/tokens/{digest}".encode() in dump
    for token in (made["token"], doc["join_token"]):
        assert token.removeprefix("mjt_").encode() not in dump


def test_concurrent_use_of_one_token_one_wins(cluster: tuple[Cluster, dict[str, Any]]) -> None:
    c, _ = cluster
    made = admin(c, "join-token", "create")
    nodes = [c.new_node(), c.new_node()]
    with ThreadPoolExecutor(2) as pool:
        outs = list(
            pool.map(lambda n: token_join(c, n, made["token"], made["ca_fingerprint"]), nodes)
        )
    codes = sorted(o.returncode for o in outs)
    assert codes == [0, 1], [(o.returncode, o.stderr) for o in outs]
    loser = next(o for o in outs if o.returncode == 1)
    assert "used already" in loser.stderr, loser.stderr
    assert "join-token create" in loser.stderr, loser.stderr
    winner = nodes[[o.returncode for o in outs].index(0)]
    winner.replica_id = json.loads(outs[[o.returncode for o in outs].index(0)].stdout)["replica_id"]
    c.nodes.append(winner)
    c.retired.append(nodes[1 - nodes.index(winner)])
    status = c.wait_status("healthy")
    assert len(status["replicas"]) == 4
