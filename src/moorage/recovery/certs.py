"""Certificates across the cluster, from outside it (`moorage certs status`, `certs rotate`,
and the expiry warning of `moorage status`): every replica of the cluster's replica list
(bounded: one request each) answers for itself (`moorage.api.certs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from moorage.cluster.status_report import status_answer
from moorage.errors import MoorageError
from moorage.pki.trust import context_for
from moorage.recovery.client import AdminClient

ASK_TIMEOUT = 10.0
#: A replica's HTTPS workers are respawned within seconds of the new files (transport.watch).
SETTLE_TIMEOUT = 90.0


def state_of(summary: dict[str, Any]) -> str:
    if "error" in summary:
        return "unreadable"
    return "expired" if summary["expired"] else "expiring" if summary["expiring"] else "ok"


def replicas(client: AdminClient) -> list[tuple[str, str]]:
    """(replica id, URL) of every replica the cluster lists."""
    doc = status_answer(client.call("GET", "/api/v0/cluster/status"))
    return [(str(r["id"]), str(r["url"])) for r in doc.get("replicas", []) if r.get("url")]


def _one(client: AdminClient, url: str, timeout: float = ASK_TIMEOUT) -> AdminClient:
    return AdminClient([url], *client.auth, timeout=timeout)


def gather(
    client: AdminClient, targets: list[tuple[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Each replica's report (`GET /api/v0/cluster/certs`), or its id, URL and error; of
    `targets` (id, URL), by default every replica the cluster lists."""
    out = []
    for rid, url in replicas(client) if targets is None else targets:
        try:
            out.append(_one(client, url).call("GET", "/api/v0/cluster/certs"))
        except MoorageError as exc:
            out.append({"replica_id": rid, "url": url, "error": str(exc)})
    return out


def rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per certificate: the CA once (each distinct one), each replica's, and the
    operator's HTTPS certificates."""
    out: list[dict[str, Any]] = []
    seen_ca: set[str] = set()
    for rep in reports:
        rid = rep.get("replica_id")
        if "error" in rep and "replica" not in rep:
            out.append({"kind": "replica", "replica_id": rid, "url": rep.get("url"),
                        "state": "unreachable", "error": rep["error"]})  # fmt: skip
            continue
        for ca in [rep.get("ca") or {}, *(rep.get("trusted_cas") or [])]:
            if ca.get("fingerprint") not in seen_ca:
                seen_ca.add(str(ca.get("fingerprint")))
                out.append({"kind": "ca", "replica_id": None, "url": None, **ca,
                            "state": state_of(ca)})  # fmt: skip
        for kind in ("replica", "https"):
            cert = rep.get(kind)
            if cert:
                out.append({"kind": kind, "replica_id": rid, "url": rep.get("url"), **cert,
                            "state": state_of(cert)})  # fmt: skip
    return out


def rows_text(table: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in table:
        who = "CA" if r["kind"] == "ca" else f"{r['kind']} {r['replica_id']}"
        if r["state"] in ("unreachable", "unreadable"):
            lines.append(f"  {who}  {r.get('url') or r.get('path')}  {r['state'].upper()}: "
                         f"{r['error']}")  # fmt: skip
            continue
        state = r["state"] if r["state"] == "ok" else r["state"].upper()
        lines.append(
            f"  {who}  {r['subject']}  not after {r['not_after']} ({r['days_left']} days)  "
            f"{state}  {r['fingerprint']}" + (f"  SANs {','.join(r['sans'])}" if r["sans"] else "")
        )
    return lines


def expiring(client: AdminClient, targets: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The certificates of these (healthy) replicas (id, URL) that expire within 30 days or
    have expired (for `moorage status`); replicas that do not answer are left to status."""
    if not targets:
        return []
    try:
        table = rows(gather(client, targets))
    except MoorageError:
        return []
    return [
        {k: r[k] for k in ("kind", "replica_id", "not_after", "days_left", "fingerprint")}
        | {"state": r["state"]}
        for r in table
        if r["state"] in ("expiring", "expired")
    ]


def expiry_lines(found: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in found:
        who = "the cluster CA" if r["kind"] == "ca" else f"replica {r['replica_id']}'s {r['kind']}"
        when = "EXPIRED" if r["state"] == "expired" else f"expires in {r['days_left']} days"
        lines.append(
            f"warning: {who} certificate {when} ({r['not_after']}): "
            + (
                "renew it with 'moorage certs rotate --existing URL'"
                if r["kind"] == "replica"
                else "replace it (--tls-cert/--tls-key) before then"
                if r["kind"] == "https"
                else "roll the cluster to a new CA with 'moorage certs rotate --ca --existing URL'"
            )
        )
    return lines


def _wait(what: str, check: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, httpx.HTTPError) as exc:
            last = exc
        time.sleep(0.5)
    raise MoorageError(f"{what} after {timeout:.0f} s{f' ({last})' if last else ''}")


#: granian keeps an old worker serving for about 3.5 s after its successor started: the
#: new certificate counts as served once every connection for this long presents it.
STABLE_FOR = 4.0


def _serves_only(url: str, new: str) -> bool:
    """Whether every fresh connection to `url` presents `new`, for STABLE_FOR seconds."""
    # cluster.certs imports the etcd client and x509: `moorage status` (expiry warnings)
    # imports this module and needs neither.
    from moorage.cluster.certs import presented

    end = time.monotonic() + STABLE_FOR
    while presented(url) == new:
        if time.monotonic() >= end:
            return True
        time.sleep(0.25)
    return False


def _healthy(url: str) -> bool:
    r = httpx.get(f"{url}/_ping", timeout=5, verify=context_for(url))
    return r.status_code == 200 and r.json().get("healthy") is True


def renew_one(client: AdminClient, rid: str, url: str) -> dict[str, Any]:
    """Renew one replica's certificate and wait until it serves with it: its etcd member
    presents it (checked by the replica), its HTTPS listener too, and it is healthy."""
    done: dict[str, Any] = _one(client, url, 60).call("POST", "/api/v0/cluster/certs/renew", {})
    new = done["new"]
    for plane in ("etcd_client", "etcd_peer"):
        if done.get(plane) != new:
            raise MoorageError(
                f"replica {rid} renewed its certificate ({new}) but its etcd {plane[5:]} "
                f"listener presents {done.get(plane)}; see its D/log/etcd.log"
            )
    if url.startswith("https://") and not done.get("https_own"):
        _wait(f"replica {rid} ({url}) does not serve its new certificate {new}",
              lambda: _serves_only(url, new))  # fmt: skip
        done["https"] = new
    _wait(f"replica {rid} ({url}) is not healthy after its renewal", lambda: _healthy(url))
    return done


# --- certs rotate --ca (moorage.cluster.ca_rotation) ----------------------------------------

ROTATION_PATH = "/api/v0/cluster/certs/ca-rotation"
#: A replica's trust step may restart its etcd member and wait for it (up to 90 s there).
TRUST_TIMEOUT = 180.0


def rotation_state(client: AdminClient) -> dict[str, Any]:
    """The CA rotation in progress (`phase` None when there is none)."""
    doc: dict[str, Any] = client.call("GET", ROTATION_PATH)
    return doc


def rotation_step(client: AdminClient, step: str) -> dict[str, Any]:
    """A cluster-wide step: begin, reissue, drop, finish (each idempotent)."""
    doc: dict[str, Any] = client.call("POST", ROTATION_PATH, {"step": step})
    return doc


def trust_one(client: AdminClient, rid: str, url: str, phase: str) -> dict[str, Any]:
    """Replica `rid` trusts what `phase` needs (its etcd member restarted if it must, healthy
    again before this returns); then it must answer /_ping healthy."""
    done: dict[str, Any] = _one(client, url, TRUST_TIMEOUT).call(
        "POST", "/api/v0/cluster/certs/ca-trust", {"phase": phase}
    )
    _wait(f"replica {rid} ({url}) is not healthy after its etcd restart", lambda: _healthy(url))
    return done


def issued_by_subject(report: dict[str, Any], subject: str) -> bool:
    """Whether a replica's report shows a certificate issued by the CA named `subject`."""
    return str((report.get("replica") or {}).get("issuer")) == subject
