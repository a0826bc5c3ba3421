"""The replica process: starts, authenticates, answers health, restarts with its data."""

from __future__ import annotations

import hashlib
import time

import httpx
from harness.replica import Replica


def test_ping_and_health(client: httpx.Client) -> None:
    assert client.get("/_ping").json() == {"healthy": True}
    doc = client.get("/api/v0/health").json()
    assert doc["healthy"] is True
    assert doc["components"]["etcd"]["healthy"] is True
    assert doc["components"]["storage"]["healthy"] is True


def test_anonymous_is_refused(registry: Replica) -> None:
    with registry.client(auth=None) as c:
        r = c.get("/v2/")
        assert r.status_code == 401
        assert "Basic realm=" in r.headers["www-authenticate"]
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
        r = c.post("/v2/x/blobs/uploads/")
        assert r.status_code == 401


def test_wrong_password_is_refused(registry: Replica) -> None:
    with registry.client(auth=("admin", "nope")) as c:
        assert c.get("/v2/").status_code == 401


def test_restart_keeps_data(fresh_replica: Replica) -> None:
    fresh_replica.start()
    blob = b"kept across restarts"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with fresh_replica.client() as c:
        r = c.post(f"/v2/keep/blobs/uploads/?digest={digest}", content=blob)
        assert r.status_code == 201
    fresh_replica.stop()
    assert not fresh_replica.pids(), "pid files are removed on a clean stop"
    fresh_replica.start()
    with fresh_replica.client() as c:
        assert c.get(f"/v2/keep/blobs/{digest}").content == blob


def test_metrics(registry: Replica) -> None:
    blob = b"counted bytes" * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with registry.client() as c:
        assert (
            c.post(f"/v2/metrics/test/blobs/uploads/?digest={digest}", content=blob).status_code
            == 201
        )
        assert c.get(f"/v2/metrics/test/blobs/{digest}").content == blob
        assert c.get("/v2/metrics/test/manifests/nope").status_code == 404
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"{registry.url}/metrics").text
        if 'moorage_replica_role{role="leader"} 1.0' in text or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert 'moorage_replica_role{role="leader"} 1.0' in text
    assert "moorage_etcd_healthy 1.0" in text
    assert "moorage_storage_healthy 1.0" in text
    assert 'moorage_http_requests_total{method="POST",route="upload",status="201"}' in text
    assert 'moorage_http_requests_total{method="GET",route="manifest",status="404"}' in text
    assert "moorage_http_request_duration_seconds_bucket" in text
    sent = [
        ln
        for ln in text.splitlines()
        if ln.startswith('moorage_http_sent_bytes_total{route="blob"}')
    ]
    assert sent
    assert float(sent[0].split()[-1]) >= len(blob)
    received = [
        ln
        for ln in text.splitlines()
        if ln.startswith('moorage_http_received_bytes_total{route="upload"}')
    ]
    assert received
    assert float(received[0].split()[-1]) >= len(blob)


def test_admin_api_refuses_bad_input_clearly(registry: Replica) -> None:
    """The cluster admin API: credentials required; malformed requests get a 400 that says
    what is wrong, never a 500; nothing changes (the cluster still has its one member)."""
    base = f"{registry.url}/api/v0/cluster"
    assert httpx.post(f"{base}/join", json={}).status_code == 401
    bad = [
        ("join", b"not json"),
        ("join", b"[]"),
        ("join", b"{}"),
        ("join", b'{"replica_id": "abc", "peer_url": "http://127.0.0.1:1"}'),
        ("join", b'{"replica_id": "0123456789ab", "peer_url": 1}'),
        ("join", b'{"replica_id": "0123456789ab", "peer_url": "http://no-port"}'),
        ("join/promote", b'{"member_id": "not hex"}'),
        ("join/end", b"{}"),
        ("remove", b'{"replica_ids": "x"}'),
        ("remove", b'{"replica_ids": []}'),
    ]
    with registry.client() as c:
        for path, body in bad:
            r = c.post(f"{base}/{path}", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (path, body, r.status_code, r.text)
            assert r.json()["error"], (path, body, r.text)
        # The bad requests changed nothing, and a corrupt heartbeat record another test wrote
        # (test_scale_limits) hides no replica's heartbeat: the cluster is healthy.
        doc = c.get(f"{base}/status").json()
        assert doc["scenario"] == "healthy", doc["replicas"]
        assert len(doc["replicas"]) == 1
