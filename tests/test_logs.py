"""Logs for machines (`--log-format json`) and the request id of every response (admin
API errors included).

One replica started with `moorage run --log-format json` serves the module; its log (the run
process's stdout and stderr, API worker included) is read back after the requests.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.cluster import Cluster, Node
from harness.process import ADMIN_PASSWORD, cli_env, moorage_cmd
from harness.replica import Replica

from tests.oci import image_manifest, oci_digest

NEW_ID = re.compile(r"[0-9a-f]{24}")
ACCESS_FIELDS = {
    "time",
    "level",
    "replica",
    "request_id",
    "method",
    "route",
    "status",
    "bytes",
    "latency_ms",
    "user",
}


@pytest.fixture(scope="module")
def json_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    r = Replica(tmp_path_factory.mktemp("logs") / "data", run_args=["--log-format", "json"])
    r.start()
    yield r
    r.stop()


def replica_id(r: Replica) -> str:
    doc: dict[str, Any] = json.loads((r.data_dir / "moorage.json").read_text())
    return str(doc["replica_id"])


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the log as its JSON object (a line that is not one fails the test)."""
    docs = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


def access_lines(log: Path, request_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The access lines of one request id. A line is written once the response is complete,
    so just after the client has it: wait for `count` of them (up to 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        found = [
            d
            for d in log_lines(log)
            if d.get("logger") == "moorage.access" and d.get("request_id") == request_id
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_every_line_of_a_json_log_is_an_object_with_its_fields(json_replica: Replica) -> None:
    with json_replica.client() as c:
        blob = b"logged blob"
        digest = oci_digest(blob)
        pushed = c.post(f"/v2/logs/one/blobs/uploads/?digest={digest}", content=blob)
        assert pushed.status_code == 201, pushed.text
        assert c.get(f"/v2/logs/one/blobs/{digest}").content == blob
        assert c.get("/api/v0/health").status_code == 200
        assert c.get("/api/v0/users").status_code == 200
        assert c.get("/api/v0/no-such-thing").status_code == 404
    with json_replica.client(auth=None) as anonymous:
        last = anonymous.get("/v2/")
        assert last.status_code == 401
    assert access_lines(json_replica.log, last.headers["x-request-id"])
    docs = log_lines(json_replica.log)
    me = replica_id(json_replica)
    for doc in docs:
        assert {"time", "level", "replica", "message"} <= doc.keys(), doc
        assert doc["time"].endswith("Z")
        assert datetime.fromisoformat(doc["time"][:-1] + "+00:00")
        assert doc["level"] in ("debug", "info", "warning", "error", "critical"), doc
        assert doc["replica"] == me, doc
    # the replica process's own lines (startup) and the server's are there too
    assert any("serving on" in d["message"] for d in docs)
    assert any(d["logger"] == "_granian" for d in docs)
    access = [d for d in docs if d.get("logger") == "moorage.access"]
    assert access, "no access line"
    for doc in access:
        assert doc.keys() >= ACCESS_FIELDS, doc
    by_route = {(d["method"], d["route"]): d for d in access}
    get = by_route[("GET", "/v2/{name}/blobs/{digest}")]
    assert get["status"] == 200
    assert get["bytes"] == len(blob)
    assert get["user"] == "admin"
    assert get["repository"] == "logs/one"
    assert get["latency_ms"] >= 0
    post = by_route[("POST", "/v2/{name}/blobs/uploads")]
    assert post["status"] == 201
    assert post["bytes_in"] == len(blob)
    assert by_route[("GET", "/api/v0/health")]["status"] == 200
    user = by_route[("GET", "/api/v0/users")]
    assert user["status"] == 200
    assert user["user"] == "admin"
    assert by_route[("GET", "unmatched")]["status"] == 404
    base = by_route[("GET", "/v2/")]
    assert base["status"] == 401
    assert base["user"] is None


def test_a_failing_push_names_its_request_id_in_header_envelope_and_log(
    json_replica: Replica,
) -> None:
    config = b"{}"
    missing_layer = b"never pushed"
    manifest = image_manifest(config, missing_layer)
    with json_replica.client() as c:
        resp = c.put(
            "/v2/logs/failing/manifests/v1",
            content=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
    assert resp.status_code == 400, resp.text
    rid = resp.headers["x-request-id"]
    assert NEW_ID.fullmatch(rid)
    error = resp.json()["errors"][0]
    assert error["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert error["detail"]["request_id"] == rid
    assert error["detail"]["missing"], "the envelope's own detail is kept"
    [line] = access_lines(json_replica.log, rid)
    assert line["status"] == 400
    assert line["method"] == "PUT"
    assert line["route"] == "/v2/{name}/manifests/{reference}"
    assert line["repository"] == "logs/failing"
    assert line["user"] == "admin"


def test_the_status_request_lends_its_id_to_the_pings_of_the_replicas(
    json_replica: Replica,
) -> None:
    with json_replica.client() as c:
        resp = c.get("/api/v0/cluster/status", headers={"X-Request-Id": "status-1"})
    assert resp.status_code == 200, resp.text
    routes = {d["route"] for d in access_lines(json_replica.log, "status-1", count=2)}
    assert routes == {"/api/v0/cluster/status", "/_ping"}


def test_a_safe_client_request_id_is_kept_and_a_hostile_one_replaced(
    json_replica: Replica,
) -> None:
    with json_replica.client() as c:
        resp = c.get("/v2/logs/none/manifests/nope", headers={"X-Request-Id": "push-42.a_B"})
        assert resp.status_code == 404
        assert resp.headers["x-request-id"] == "push-42.a_B"
        assert resp.json()["errors"][0]["detail"] == {"request_id": "push-42.a_B"}
        assert len(access_lines(json_replica.log, "push-42.a_B")) == 1
        hostile: list[str | bytes] = [
            "x" * 65,
            "two words",
            'quote"brace}',
            "../../etc/passwd",
            "",
            "ünïcode".encode(),
            "id;DROP",
        ]
        for sent in hostile:
            value = sent.encode() if isinstance(sent, str) else sent
            resp = c.get("/_ping", headers=[(b"X-Request-Id", value)])
            got = resp.headers["x-request-id"]
            assert got != sent
            assert NEW_ID.fullmatch(got), (sent, got)
            assert len(access_lines(json_replica.log, got)) == 1
    text = json_replica.log.read_text()
    for sent in hostile[:4]:
        assert isinstance(sent, str)
        assert json.dumps(sent)[1:-1] not in text


def test_no_credentials_or_query_strings_in_the_log(json_replica: Replica) -> None:
    secret_query = "s3cr3tQueryValue9"
    with json_replica.client() as c:
        c.get(f"/v2/logs/one/tags/list?n=1&last={secret_query}")
        token = c.get("/auth/token", params={"scope": "repository:logs/one:pull"})
    with json_replica.client(auth=None) as anonymous:
        bad = anonymous.get("/v2/", headers={"Authorization": "Bearer not.a.valid-token-xyz"})
        assert bad.status_code == 401
    assert access_lines(json_replica.log, bad.headers["x-request-id"])
    text = json_replica.log.read_text()
    basic = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    assert secret_query not in text
    assert ADMIN_PASSWORD not in text
    assert basic not in text
    assert "not.a.valid-token-xyz" not in text
    [issued] = access_lines(json_replica.log, token.headers["x-request-id"])
    assert issued["route"] == "/auth/token"
    assert issued["user"] == "admin"
    if token.status_code == 200:  # the token flow is on: a Bearer token is never logged
        jwt = token.json()["token"]
        with json_replica.client(auth=None) as bearer:
            got = bearer.get("/v2/logs/one/tags/list", headers={"Authorization": f"Bearer {jwt}"})
            assert got.status_code in (200, 404)
        [line] = access_lines(json_replica.log, got.headers["x-request-id"])
        assert line["user"] == "admin"
        assert jwt not in json_replica.log.read_text()
    assert "?" not in "".join(
        d["route"] for d in log_lines(json_replica.log) if d.get("logger") == "moorage.access"
    )


def test_text_log_replica_still_returns_request_ids(client: httpx.Client) -> None:
    resp = client.get("/v2/logs/text/manifests/absent")
    assert resp.status_code == 404
    rid = resp.headers["x-request-id"]
    assert resp.json()["errors"][0]["detail"] == {"request_id": rid}
    assert client.get("/_ping", headers={"X-Request-Id": "kept"}).headers["x-request-id"] == "kept"


def test_start_keeps_the_log_format_of_the_replica(json_replica: Replica) -> None:
    """`run --log-format json` stored the format: `moorage start` (in the background, its
    log in D/logs/moorage.log) logs JSON too, without the flag. Runs last: it restarts the
    module's replica."""
    json_replica.stop()
    env = cli_env()
    d = str(json_replica.data_dir)
    subprocess.run(moorage_cmd("start", "--data-dir", d), env=env, check=True, timeout=120)
    try:
        with json_replica.client() as c:
            rid = c.get("/_ping").headers["x-request-id"]
        log = json_replica.data_dir / "logs" / "moorage.log"
        [line] = access_lines(log, rid)
        assert line["route"] == "/_ping"
        assert line["status"] == 200
        docs = log_lines(log)
        assert all(d["replica"] == replica_id(json_replica) for d in docs)
    finally:
        subprocess.run(moorage_cmd("stop", "--data-dir", d), env=env, check=True, timeout=60)


class JsonNode(Node):
    """A replica installed or joined with `--log-format json`."""

    def flags(self) -> list[str]:
        return [*super().flags(), "--log-format", "json"]


class JsonCluster(Cluster):
    node_class = JsonNode


def test_install_and_join_with_json_logs_write_json_only(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A 2-replica cluster made by `install` and `join` with `--log-format json`: every line
    each replica's log holds is a JSON object with time, level and its replica id; its
    access lines have every field; an admin API error carries the request id of its access
    line."""
    c = JsonCluster(tmp_path_factory.mktemp("jsonlogs"))
    try:
        c.install()
        c.join()
        rids = {}
        for node in c.nodes:
            with node.client() as http:
                resp = http.post("/api/v0/webhooks", json={"url": "ftp://x/", "events": []})
                assert resp.status_code == 400, resp.text
                assert resp.json()["code"] == "INVALID"
                assert resp.json()["request_id"] == resp.headers["x-request-id"]
                rids[node.name] = resp.json()["request_id"]
                assert http.get("/v2/").status_code == 200
        for node in c.nodes:
            log = node.data_dir / "logs" / "moorage.log"
            (line,) = access_lines(log, rids[node.name])
            assert line.keys() >= ACCESS_FIELDS, line
            assert (line["status"], line["route"]) == (400, "/api/v0/webhooks")
            docs = log_lines(log)
            for doc in docs:
                assert {"time", "level", "replica", "message"} <= doc.keys(), doc
                assert doc["replica"] == node.replica_id, doc
            assert any(d.get("logger") == "moorage.access" for d in docs)
    finally:
        c.shutdown()
