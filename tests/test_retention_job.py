"""The scheduled retention job end to end (cluster/jobs.py `policy_loop`): a replica started
with `MOORAGE_RETENTION_INTERVAL=1` (the documented knob; the default is an hour) applies a
keep-last rule by itself, without `policy apply`: the oldest tags go, the newest N and an
immutable one stay, and each deletion is in the audit log as the job's (`actor=moorage`)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from harness.replica import Replica

from tests.oci import MT_OCI_CONFIG, MT_OCI_IMAGE, MT_OCI_LAYER, oci_digest


def push(c: httpx.Client, repo: str, tag: str) -> str:
    """One config and one layer shared by every tag, a manifest of its own per tag."""
    config, layer = b'{"os":"linux","architecture":"amd64"}', b"retention job layer" * 64
    for blob in (config, layer):
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": oci_digest(blob)}, content=blob)
        assert r.status_code == 201, r.text
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_IMAGE,
            "config": {
                "mediaType": MT_OCI_CONFIG,
                "digest": oci_digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": MT_OCI_LAYER, "digest": oci_digest(layer), "size": len(layer)}
            ],
            "annotations": {"tag": tag},
        }
    ).encode()
    r = c.put(f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": MT_OCI_IMAGE})
    assert r.status_code == 201, r.text
    return oci_digest(body)


def tags_of(c: httpx.Client, repo: str) -> list[str]:
    r = c.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200, r.text
    return sorted(r.json()["tags"])


def test_scheduled_job_applies_keep_last(
    fresh_replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOORAGE_RETENTION_INTERVAL", "1")
    fresh_replica.start()
    repo = "sched/app"
    with fresh_replica.client() as c:
        digests = {f"build-{i}": push(c, repo, f"build-{i}") for i in range(4)}
        digests["release-1"] = push(c, repo, "release-1")  # immutable: kept, though not last
        for i in range(4, 6):
            digests[f"build-{i}"] = push(c, repo, f"build-{i}")
        # Another namespace without a rule: the job leaves it alone.
        push(c, "other/app", "build-0")
        push(c, "other/app", "build-1")
        started = time.time()
        r = c.post(
            "/api/v0/policies",
            json={"on": "sched", "keep_last": 2, "immutable_tags": ["release-*"]},
        )
        assert r.status_code == 200, r.text

        kept = ["build-4", "build-5", "release-1"]
        deadline = time.monotonic() + 60
        while tags_of(c, repo) != kept and time.monotonic() < deadline:
            time.sleep(0.3)
        assert tags_of(c, repo) == kept, fresh_replica.log_tail()
        assert tags_of(c, "other/app") == ["build-0", "build-1"]
        for tag in kept:
            r = c.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MT_OCI_IMAGE})
            assert r.status_code == 200
            assert r.headers["docker-content-digest"] == digests[tag]

        # Each deletion audited once, as the job's, with the rule and the digest.
        events: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while len(events) < 4 and time.monotonic() < deadline:
            r = c.get(
                "/api/v0/audit",
                params={"since": f"{started:.3f}", "action": "retention.delete"},
            )
            assert r.status_code == 200, r.text
            events = r.json()["events"]
            time.sleep(0.3)
        assert sorted(str(e["target"]) for e in events) == [f"{repo}:build-{i}" for i in range(4)]
        for e in events:
            assert e["actor"] == "moorage"
            assert e["outcome"] == "ok"
            detail = e["detail"]
            assert isinstance(detail, dict)
            assert detail["rule"] == "sched"
            assert detail["digest"] == digests[str(e["target"]).split(":")[1]]
        # The job keeps running: a newer push makes the oldest kept build go too.
        digests["build-6"] = push(c, repo, "build-6")
        deadline = time.monotonic() + 60
        want = ["build-5", "build-6", "release-1"]
        while tags_of(c, repo) != want and time.monotonic() < deadline:
            time.sleep(0.3)
        assert tags_of(c, repo) == want
