"""`moorage certs rotate --ca` (issue 12 item 5) on a real 3-replica cluster serving HTTPS:
a rotation interrupted after its first replica (as a crash would leave it) is explained by
`certs status`, refuses joins and plain renewals, and is finished by running the command
again while a thread pushes and pulls through every replica: no failed request; afterwards
every replica trusts only the new CA and holds a certificate of it, an etcd client holding
an old-CA certificate is refused by every member, `ca export` prints the new fingerprint and
a join with a token pinning the new CA works."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.cluster.certs import presented
from moorage.pki import TlsDir, fingerprint
from moorage.pki import ca as pki
from tests.cluster import AUTH, OCI_MANIFEST
from tests.test_certs import Pusher, TlsCluster, etcd_presents, on_disk
from tests.test_pki_etcd import etcdctl


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    c = TlsCluster(tmp_path_factory.mktemp("carot"))
    try:
        first = c.install()
        c.env["MOORAGE_CA_FILE"] = str(TlsDir(first.data_dir).ca_cert)
        c.join()
        c.join()
        yield c
    finally:
        c.shutdown()


def client_url(port: int) -> str:
    return f"https://127.0.0.1:{port}"


def test_rotate_ca_resumes_under_pushes_and_the_old_ca_is_refused_after(
    three: TlsCluster, tmp_path: Path
) -> None:
    nodes = three.nodes
    url = three.urls()
    first = TlsDir(nodes[0].data_dir)
    old_ca = first.read_ca()
    old_fp = fingerprint(old_ca)
    # An etcd client certificate of the old CA, kept for after the rotation.
    old_pair = TlsDir(tmp_path / "old")
    old_pair.ensure()
    for f in ("replica.crt", "replica.key"):
        shutil.copy(first.path / f, old_pair.path / f)

    # --dry-run: the plan, step by step; nothing changes.
    dry = three.cli("certs", "rotate", "--ca", "--existing", url, "--dry-run")
    assert "trusts both CAs" in dry.stdout
    assert "restarts its etcd member" in dry.stdout
    assert "nothing was changed" in dry.stdout
    assert [fingerprint(c) for c in first.read_bundle()] == [old_fp]

    # A rotation interrupted after its first replica: begun, one replica trusts both.
    with nodes[0].client(timeout=120) as c:
        begun = c.post("/api/v0/cluster/certs/ca-rotation", json={"step": "begin"}).json()
    new_fp = begun["new_ca"]
    assert begun["phase"] == "trust"
    assert begun["old_ca"] == old_fp
    assert new_fp != old_fp
    with nodes[1].client(timeout=200) as c:
        r = c.post("/api/v0/cluster/certs/ca-trust", json={"phase": "trust"})
    assert r.status_code == 200, r.text
    assert r.json()["etcd_restarted"] is True
    assert r.json()["trusted"] == [old_fp, new_fp]
    three.wait_status("healthy")

    # certs status explains it (text and JSON); both CAs are listed.
    st = json.loads(three.cli("certs", "status", "--existing", url, "--json").stdout)
    assert st["ca_rotation"]["phase"] == "trust"
    assert (st["ca_rotation"]["old_ca"], st["ca_rotation"]["new_ca"]) == (old_fp, new_fp)
    assert {r["fingerprint"] for r in st["certificates"] if r["kind"] == "ca"} == {old_fp, new_fp}
    text = three.cli("certs", "status", "--existing", url).stdout
    assert "CA ROTATION IN PROGRESS" in text
    assert "certs rotate --ca" in text
    # Meanwhile joins and plain renewals are refused, saying what to do.
    joiner = three.new_node()
    refused = three.join_raw(joiner)
    assert refused.returncode != 0
    assert "CA rotation is in progress" in refused.stderr, refused.stderr
    three.cli("destroy", "--yes", "--data-dir", str(joiner.data_dir), node=joiner, check=False)
    plain = three.cli("certs", "rotate", "--existing", url, "--yes", check=False)
    assert plain.returncode == 1
    assert "certs rotate --ca" in plain.stderr, plain.stderr

    # Running it again finishes it, under continuous pushes and pulls through every replica.
    plan = json.loads(
        three.cli("certs", "rotate", "--ca", "--existing", url, "--dry-run", "--json").stdout
    )
    assert plan["ca_rotation"]["resuming"] == "trust"
    assert [s["done"] for s in plan["steps"]] == [True, False, False, False]
    pusher = Pusher(nodes)
    pusher.start()
    began = time.monotonic()
    try:
        out = three.cli("certs", "rotate", "--ca", "--existing", url, "--yes", "--json",
                        timeout=900)  # fmt: skip
        took = time.monotonic() - began
    finally:
        for _ in range(3):  # pushes go on a little after the last step
            done = pusher.pushed
            while pusher.pushed == done and pusher.is_alive() and not pusher.failures:
                pusher.stopping.wait(0.2)
        pusher.stopping.set()
        pusher.join(120)
    assert pusher.failures == [], pusher.failures
    assert pusher.pushed >= 3
    # At most one connection dropped per worker replaced: each replica's HTTPS worker is
    # replaced once per phase it takes a new certificate in.
    assert len(pusher.retried) <= 3 * len(nodes), pusher.retried
    print(f"\nrotate --ca (resumed after 1 of 3 trust steps): {took:.1f} s, "
          f"{pusher.pushed} pushes+pulls meanwhile, none failed, "
          f"{len(pusher.retried)} pushed again after a dropped connection")  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["ca_fingerprint"] == new_fp
    assert doc["old_ca"] == old_fp
    ids = sorted(n.replica_id for n in nodes)
    steps = {
        phase: {t["replica_id"]: t["etcd_restarted"] for t in doc["trusted"] if t["phase"] == phase}
        for phase in ("trust", "reissue", "drop")
    }
    assert [t["phase"] for t in doc["trusted"]] == ["trust"] * 3 + ["reissue"] * 3 + ["drop"] * 3
    # The replica that trusted both already was not restarted again; the others were.
    assert steps == {
        "trust": {i: i != nodes[1].replica_id for i in ids},
        "reissue": dict.fromkeys(ids, False),
        "drop": dict.fromkeys(ids, True),
    }
    assert sorted(r["replica_id"] for r in doc["renewed"]) == sorted(ids)

    # Every replica: trusts only the new CA, holds a certificate of it, serves it everywhere.
    new_ca = first.read_ca()
    assert fingerprint(new_ca) == new_fp
    for n in nodes:
        tls = TlsDir(n.data_dir)
        assert [fingerprint(c) for c in tls.read_bundle()] == [new_fp]
        assert pki.issued_by(tls.read_cert(), new_ca)
        mine = on_disk(n)
        assert presented(n.url) == mine
        assert etcd_presents(n) == (mine, mine)

    # An etcd client with the old CA's certificate (trusting the new CA, so that only its
    # own certificate is in question) is refused by every member; the members' own work.
    shutil.copy(first.ca_cert, old_pair.ca_cert)
    for n in nodes:
        endpoint = client_url(n.etcd_client_port)
        read = etcdctl(endpoint, "get", "/moorage/", "--prefix", "--keys-only", tls=old_pair)
        assert read.returncode != 0, (n, read.stdout)
        assert "/moorage/" not in read.stdout
        write = etcdctl(endpoint, "put", "/ca-probe", "evil", tls=old_pair)
        assert write.returncode != 0, n
        ok = etcdctl(endpoint, "get", "/moorage/cluster", "--keys-only", tls=TlsDir(n.data_dir))
        assert ok.returncode == 0, (n, ok.stderr)

    # The cluster's CA is the new one: ca export, certs status (no rotation left).
    exported = json.loads(three.cli("ca", "export", "--existing", url, "--json").stdout)
    assert exported["fingerprint"] == new_fp
    assert pki.load_cert(exported["pem"].encode()) == new_ca
    st = json.loads(three.cli("certs", "status", "--existing", url, "--json").stdout)
    assert "ca_rotation" not in st
    assert [r["fingerprint"] for r in st["certificates"] if r["kind"] == "ca"] == [new_fp]
    three.wait_status("healthy")

    # Every acknowledged push is readable, through another replica.
    with nodes[2].client() as c:
        tags = set(c.get("/v2/rot/app/tags/list?n=10000").json()["tags"])
        assert len(tags) >= pusher.pushed
        for tag in sorted(tags):
            r = c.get(f"/v2/rot/app/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200, (tag, r.text)

    # A join after the rotation works: a token pins the new CA (the old pin is refused before
    # the token is sent); the newcomer trusts the new CA only.
    made = json.loads(three.cli("join-token", "create", "--existing", url, "--json").stdout)
    assert made["ca_fingerprint"] == new_fp
    joined = three.new_node()
    token_join = ("join", "--existing", nodes[0].url, *joined.flags(), "--token", made["token"])
    stale = three.cli(*token_join, "--ca-fingerprint", old_fp, node=joined, check=False)
    assert stale.returncode != 0
    assert "join token was not sent" in stale.stderr, stale.stderr
    three.cli("destroy", "--yes", "--data-dir", str(joined.data_dir), node=joined, check=False)
    out = three.cli(*token_join, "--ca-fingerprint", new_fp, "--json", node=joined)
    joined.replica_id = json.loads(out.stdout)["replica_id"]
    three.nodes.append(joined)
    assert [fingerprint(c) for c in TlsDir(joined.data_dir).read_bundle()] == [new_fp]
    assert pki.issued_by(TlsDir(joined.data_dir).read_cert(), new_ca)
    with joined.client() as c:
        assert c.get("/v2/", auth=AUTH).status_code == 200
