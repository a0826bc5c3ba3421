"""Network partitions: three replicas, each in its own network namespace; one is cut off.

The majority side keeps serving reads and writes and reports the cut replica; the cut
replica serves reads only and refuses every write, so the two sides never accept diverging
writes (no split brain); after the heal the cut replica serves everything pushed meanwhile.

The replicas listen on non-loopback addresses, so everything runs over TLS: the API serves
HTTPS with the cluster certificates (every client here trusts only the CA `moorage ca export`
wrote) and etcd speaks mutual TLS, which no process without a cluster certificate gets through.

The tests share one cluster (`shared`, built once: a cluster in namespaces is ~15 s of CPU);
each heals what it cuts and leaves it healthy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaos.images import Image, PushRefused, make_image, push, verify
from harness.cluster import Cluster, Node
from harness.netns import NetLab, netns_unavailable
from harness.process import moorage

from moorage.pki import ca as pki
from moorage.pki.files import TlsDir
from tests.netns import run_in_netns
from tests.test_clients import CREDS, build_image, image_blobs
from tests.test_pki_etcd import etcdctl, issue


def try_push(node: Node, repo: str, tag: str, image: Image, inside: bool = False) -> int:
    """Push through `node` (from inside its namespace with `inside`); the manifest PUT's
    status, an earlier step's error status, or 0 when no answer came."""

    def attempt() -> int:
        with node.client(timeout=20) as c:
            try:
                push(c, repo, tag, image)
            except PushRefused as exc:
                return exc.status
            except httpx.HTTPError:
                return 0
        return 201

    if inside:
        assert node.slot is not None
        return run_in_netns(node.slot.netns, attempt)
    return attempt()


def push_ok(node: Node, repo: str, tag: str, image: Image, patience: float = 60) -> None:
    """Push through `node`, retrying while the cluster elects a leader."""
    deadline = time.monotonic() + patience
    while (status := try_push(node, repo, tag, image)) != 201:
        assert time.monotonic() < deadline, f"push through {node} kept failing: {status}"
        time.sleep(0.5)


def check_pull(node: Node, repo: str, tag: str, image: Image, inside: bool = False) -> None:
    def attempt() -> str:
        with node.client() as c:
            return verify(c, repo, tag, image.digest, image.blob_digests)

    if inside:
        assert node.slot is not None
        problem = run_in_netns(node.slot.netns, attempt)
    else:
        problem = attempt()
    assert problem == "", f"{node}: {problem}"


def wait_read_only(node: Node, patience: float = 60) -> None:
    """Until the cut replica itself says it cannot take writes."""
    assert node.slot is not None

    def ping() -> tuple[int, int]:
        with node.client(timeout=5) as c:
            return c.get("/_ping").status_code, c.get("/_ping?writable=1").status_code

    deadline = time.monotonic() + patience
    while (got := run_in_netns(node.slot.netns, ping)) != (200, 503):
        assert time.monotonic() < deadline, f"{node} never became read-only: {got}"
        time.sleep(0.5)


def unhealthy_ids(doc: dict[str, Any]) -> list[str]:
    return sorted(r["id"] for r in doc["replicas"] if not r["healthy"])


def three(cluster: Cluster) -> tuple[Node, Node, Node]:
    r0 = cluster.install()
    r1 = cluster.join()
    r2 = cluster.join(via=r1)
    doc = cluster.wait_status("healthy")
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    return r0, r1, r2


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas, each in a network namespace of its own, for the whole module."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.fail(f"network-cut tests cannot run: {reason}")
    cluster = Cluster(tmp_path_factory.mktemp("partition"), NetLab())
    try:
        three(cluster)
        yield cluster
    finally:
        cluster.shutdown()  # stops every replica by pid, then deletes namespaces and links


@pytest.fixture
def net_three(shared: Cluster) -> Cluster:
    """The shared cluster, healthy (the previous test healed what it cut)."""
    doc = shared.wait_status("healthy", timeout=120)
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    return shared


def partition_then_heal(cluster: Cluster, cut: Node, repo: str) -> None:
    """The whole scenario with `cut` cut off from the two others (healed again on failure
    too: the module's next test uses the cluster), pushing to `repo`."""
    assert cluster.lab is not None
    assert cut.slot is not None
    try:
        cut_then_heal(cluster, cut, repo)
    finally:
        if cut.slot.index in cluster.lab.cut_slots:
            cluster.lab.heal(cut.slot)


def cut_then_heal(cluster: Cluster, cut: Node, repo: str) -> None:
    """partition_then_heal's steps, the heal among them."""
    assert cluster.lab is not None
    assert cut.slot is not None
    majority = [n for n in cluster.nodes if n is not cut]
    before = make_image("before")
    push_ok(majority[0], repo, "before", before)

    cluster.lab.cut(cut.slot)
    # The majority keeps taking pushes (after a new election when the leader was cut).
    during = {f"during-{i}": make_image(f"during-{i}") for i in range(4)}
    for i, (tag, image) in enumerate(during.items()):
        push_ok(majority[i % 2], repo, tag, image)
    # Status asked through the majority names the cut replica, and only it.
    doc = cluster.wait_status(
        "replicas-unhealthy", majority, until=lambda d: unhealthy_ids(d) == [cut.replica_id]
    )
    assert doc["quorum"]["members"] == 3
    assert doc["quorum"]["healthy"] == 2
    assert any(r["leader"] for r in doc["replicas"] if r["id"] != cut.replica_id), doc
    row = next(r for r in doc["replicas"] if r["id"] == cut.replica_id)
    assert not row["reachable"]
    assert f"--replica-id {cut.replica_id}" in doc["action"]

    # The cut replica serves reads from its local copy and refuses writes, clearly.
    wait_read_only(cut)
    check_pull(cut, repo, "before", before, inside=True)
    assert try_push(cut, repo, "minority-only", make_image("m"), inside=True) == 503

    # No split brain: both sides are asked, at once, to tag different manifests with the same
    # tag; only the majority's push is acknowledged.
    ours, theirs = make_image("majority-side"), make_image("minority-side")
    minority_status: list[int] = []
    t = threading.Thread(
        target=lambda: minority_status.append(try_push(cut, repo, "contested", theirs, inside=True))
    )
    t.start()
    push_ok(majority[1], repo, "contested", ours)
    t.join()
    assert minority_status == [503]
    for n in majority:
        check_pull(n, repo, "contested", ours)

    cluster.lab.heal(cut.slot)
    doc = cluster.wait_status("healthy", timeout=120)
    assert doc["quorum"] == {"members": 3, "needed": 2, "healthy": 3}
    # The healed replica serves everything pushed meanwhile, and the majority's tag.
    for tag, image in {"before": before, **during, "contested": ours}.items():
        check_pull(cut, repo, tag, image)
    with cut.client() as c:
        tags = c.get(f"/v2/{repo}/tags/list").json()["tags"]
    assert sorted(tags) == sorted(["before", *during, "contested"])  # no "minority-only"
    after = make_image("after-heal")
    push_ok(cut, repo, "after-heal", after)
    for n in majority:
        check_pull(n, repo, "after-heal", after)


def test_cut_follower(net_three: Cluster) -> None:
    leader = net_three.leader()
    follower = next(n for n in net_three.nodes if n is not leader)
    partition_then_heal(net_three, follower, "part/follower")


def test_cut_leader(net_three: Cluster) -> None:
    leader = net_three.leader()
    partition_then_heal(net_three, leader, "part/leader")
    # The majority elected another leader while the old one was cut off.
    assert net_three.status()["scenario"] == "healthy"


def skopeo(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (make install brings it)")
    p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=240)
    assert (p.returncode == 0) == ok, f"skopeo {' '.join(args)}: {p.returncode}\n{p.stderr}"
    return p


def test_tls_everywhere_on_a_network_cluster(net_three: Cluster, tmp_path: Path) -> None:
    """Issue 12's check: three replicas on non-loopback addresses; no process without a
    cluster certificate reads or writes any etcd member; skopeo copies an image over HTTPS
    trusting nothing but what `moorage ca export` wrote, and is refused without it."""
    cluster = net_three
    nodes = cluster.nodes
    assert all(n.url.startswith("https://10.77.") for n in nodes), nodes
    first = TlsDir(nodes[0].data_dir)
    foreign = issue(pki.create_ca("someone-else"), tmp_path / "foreign", "intruder")
    probe = f"https://{nodes[0].host}:{nodes[0].etcd_client_port}"
    assert etcdctl(probe, "put", "/tls-probe", "v1", tls=first).returncode == 0
    # From the root namespace, across the bridge: what anyone on the network can try. Each
    # refused attempt waits for etcdctl's timeouts, so they all run at once.
    attempts: dict[tuple[str, str, str], list[str]] = {}
    for node in nodes:
        url = f"https://{node.host}:{node.etcd_client_port}"
        for label, opts in {
            "no certificate": ["--cacert", str(first.ca_cert)],
            "a certificate of another CA": [
                "--cacert", str(foreign.ca_cert), "--cert", str(foreign.cert),
                "--key", str(foreign.key),
            ],
        }.items():  # fmt: skip
            attempts[(node.name, label, "read")] = [url, *opts, "get", "/", "--prefix"]
            attempts[(node.name, label, "write")] = [url, *opts, "put", "/tls-probe", "evil"]
        plain = f"http://{node.host}:{node.etcd_client_port}"
        attempts[(node.name, "plain http", "write")] = [plain, "put", "/tls-probe", "evil"]
    with ThreadPoolExecutor(len(attempts)) as pool:
        outs = pool.map(lambda argv: etcdctl(*argv), attempts.values())
        results = dict(zip(attempts, outs, strict=True))
    for what, result in results.items():
        assert result.returncode != 0, (what, result.stdout)
        assert "/moorage" not in result.stdout, what
    for node in nodes:
        # The member's own certificate works, and nothing above was written.
        url = f"https://{node.host}:{node.etcd_client_port}"
        got = etcdctl(url, "get", "/tls-probe", "--print-value-only", tls=TlsDir(node.data_dir))
        assert got.stdout == "v1\n", (node, got.stderr)

    # A client host: the CA from `moorage ca export --existing`, pinned by the fingerprint
    # `moorage ca export --data-dir` prints on a replica's host, in a certs.d-style directory
    # (what /etc/containers/certs.d/HOST:PORT/ holds).
    target = nodes[1]
    installed = json.loads(moorage("ca", "export", "--data-dir", str(nodes[0].data_dir),
                                   "--json").stdout)["fingerprint"]  # fmt: skip
    assert installed == cluster.ca_fingerprint
    certs = tmp_path / "certs.d"
    certs.mkdir()
    moorage("ca", "export", "--existing", target.url, "--ca-fingerprint", installed,
            "--out", str(certs / "ca.crt"))  # fmt: skip
    src = tmp_path / "src"
    digest = build_image(src, "v1", "amd64", [{"etc/motd": b"over TLS, off loopback\n"}], tmp_path)
    ref = f"docker://{target.host}:{target.port}/net/tls:v1"
    refused = skopeo("copy", "--dest-creds", CREDS, f"oci:{src}:v1", ref, ok=False)
    assert "x509" in refused.stderr or "unknown authority" in refused.stderr, refused.stderr
    digestfile = tmp_path / "digest"
    skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", CREDS,
           "--digestfile", str(digestfile), f"oci:{src}:v1", ref)  # fmt: skip
    assert digestfile.read_text().strip() == digest
    # Every replica serves it (each its own certificate of the one CA), pulled back whole.
    for node in nodes:
        out = tmp_path / f"out-{node.name}"
        skopeo("copy", "--src-cert-dir", str(certs), "--src-creds", CREDS,
               f"docker://{node.host}:{node.port}/net/tls:v1", f"oci:{out}:back")  # fmt: skip
        assert image_blobs(out, digest) == image_blobs(src, digest)
    # Plain HTTP to an HTTPS port gets no registry answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{target.host}:{target.port}/v2/", timeout=10)
