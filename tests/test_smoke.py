"""The replica process: starts, authenticates, answers health, restarts with its data."""

from __future__ import annotations

import hashlib

import httpx

from tests.conftest import Replica


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
        assert r.headers["www-authenticate"].startswith("Basic ")
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
