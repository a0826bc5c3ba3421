"""The commands status prints, and how they are printed.

Conventions: one command per entry, in order, with the replica on whose host it runs and an
explanation; placeholders are UPPER_CASE words. `scenario_commands` picks them for a diagnosed
scenario; `action_text` and `next_block` print them; `localize` names the CLI as it runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from moorage.cluster.facts import Facts, fault_tolerance
from moorage.config import DEFAULT_ETCD_HOST
from moorage.meta.records import ReplicaRecord

PASSWORD_NOTE = "these commands read the admin password from MOORAGE_PASSWORD"
JOIN_PLACEHOLDERS = (
    "--data-dir NEW_DIR --http-addr HOST:PORT --etcd-client-port CLIENT_PORT "
    "--etcd-peer-port PEER_PORT"
)


PLACEHOLDERS = {
    "NEW_DIR": "an empty directory for the new replica's state",
    "HOST:PORT": "the new replica's listen address",
    "CLIENT_PORT": "a free port for its etcd client",
    "PEER_PORT": "a free port for its etcd peer traffic",
    "ITS_DIR": "the replica's data directory on its host",
    "BACKUP_FILE": "the newest backup file",
    "BLOB_STORAGE": "the old cluster's blob storage directory",
    "URL": "the URL of a healthy replica",
}


def placeholders(commands: list[dict[str, Any]]) -> dict[str, str]:
    """The placeholders the commands use, with what to put in their place."""
    words = {w for c in commands for w in re.split(r"[\s,=]+", c["command"])}
    return {k: v for k, v in PLACEHOLDERS.items() if k in words}


_STORAGE_PROBLEM = "API unhealthy: storage: "


def _only_storage(row: dict[str, Any]) -> bool:
    """Its one problem is its API failing blob storage: the API problem comes after the etcd
    member's and the record's in a row's error, and only a heartbeat's can follow it."""
    error = str(row["error"] or "")
    return (
        bool(row["reachable"])
        and error.startswith(_STORAGE_PROBLEM)
        and not re.search(r"; (no heartbeat|heartbeat \d+ s old)$", error)
    )


def _storage_error(row: dict[str, Any]) -> str:
    return str(row["error"]).removeprefix(_STORAGE_PROBLEM)


def command(text: str, host: str | None = None, note: str | None = None) -> dict[str, Any]:
    return {"host": host, "command": text, "note": note}


def fix_storage_command(urls: str, why: str, aside: str, then: str = "") -> dict[str, Any]:
    """Status again, once blob storage (which every replica shares) works: what to say when
    it fails on every replica that answers (`why`), whatever status could still learn."""
    return command(
        f"moorage status --existing {urls}",
        note=f"blob storage fails on every replica that answers ({why}): fix blob storage "
        "first (the S3 endpoint, its credentials and bucket, or the shared directory), then "
        f"run status again; start, remove or repair no replica for this ({aside}){then}",
    )


def scenario_commands(
    scenario: str, rows: list[dict[str, Any]], facts: Facts
) -> list[dict[str, Any]]:
    good = [r for r in rows if r["healthy"] and r["url"]]
    starting = [r for r in rows if r["state"] == "starting"]
    bad = [r for r in rows if r["state"] == "unhealthy"]
    existing = ",".join(r["url"] for r in good) or "URL"
    all_urls = ",".join(r["url"] for r in rows if r["url"]) or "URL"
    if scenario == "healthy":
        voters = sum(1 for m in facts.members if not m.is_learner)
        # Healthy, but one more failure loses quorum, or an emergency repair left fewer
        # voting members than the cluster had: not "nothing to do".
        target = max(3, facts.size)
        if voters < target:
            missing = target - voters
            if fault_tolerance(voters) == 0:
                head = (
                    f"no fault tolerance: {voters} of {voters} voting member(s) healthy, "
                    "the cluster survives 0 failures"
                )
            else:
                head = (
                    f"reduced fault tolerance: {voters} voting members, the cluster survives "
                    f"{fault_tolerance(voters)} failure(s)"
                )
            if facts.size > voters:
                head += f" (it had {facts.size} voting members before its emergency repair)"
            return [
                command(
                    f"moorage join --existing {existing} {JOIN_PLACEHOLDERS}",
                    note=f"{head}; add "
                    + ("a replica" if missing == 1 else f"{missing} replicas, one at a time")
                    + f" to survive {fault_tolerance(target)} (on a new host, or with free "
                    "ports on this one)",
                )
            ]
        return []
    if starting or scenario == "starting":
        names = ", ".join(f"{r['id']} ({r['progress']})" for r in starting) or "the replicas"
        return [
            command(
                f"moorage status --existing {all_urls}",
                note=f"wait: replica {names} is starting; run status again (if a replica "
                "stays starting for minutes, read its log: DATA_DIR/log/moorage.log)",
            )
        ]
    if scenario == "replicas-unhealthy":
        storage = [r for r in bad if _only_storage(r)]
        if storage and not good:
            # Blob storage, which every replica shares, fails on all that answer: removing
            # them would help nothing, and they are not broken.
            others = len(bad) - len(storage)
            return [
                fix_storage_command(
                    all_urls,
                    _storage_error(storage[0]),
                    "etcd is healthy and every acknowledged push is kept",
                    f"; it then names the {others} other replica(s) to replace" if others else "",
                )
            ]
        ids = ",".join(r["id"] for r in bad)
        cmds = [
            command(
                f"moorage remove --existing {existing} --replica-id {ids}",
                note=f"replica(s) {ids} do not answer or are broken: take them out of the "
                "cluster (no data is lost: the healthy replicas hold it all)",
            )
        ]
        first = good[0]["url"] if good else "URL"
        for i, r in enumerate(bad):
            cmds.append(
                command(
                    f"moorage join --existing {first} {JOIN_PLACEHOLDERS}",
                    note=(
                        f"then add a replacement for {r['id']}, on a new host or with a new "
                        "directory and free ports (or rebuild it in place: moorage repair "
                        "--existing URL --data-dir ITS_DIR)"
                    )
                    if i == 0
                    else f"and a replacement for {r['id']}",
                )
            )
        return cmds
    steps = repair_procedure(rows, facts)
    if not steps:
        return [
            command(
                "moorage start --data-dir ITS_DIR",
                note="no etcd member answers: start the replicas (on each host, ITS_DIR its "
                "data directory; several at once: --data-dir A,B,C); if none can start, run "
                "moorage emergency-repair --data-dir ITS_DIR on a survivor",
            )
        ]
    cmds = [
        command(
            steps[0]["command"],
            host=steps[0]["replica_id"],
            note=f"quorum is lost: emergency repair on replica {steps[0]['replica_id']}, the "
            "most up-to-date survivor (on its host)",
        )
    ]
    seen: set[str] = set()
    for step in steps[1:]:
        rid = step["replica_id"]
        note = None
        if rid not in seen:
            seen.add(rid)
            note = f"then replica {rid} becomes a replica of the repaired cluster again"
        cmds.append(command(step["command"], host=rid, note=note))
    return cmds


def action_text(commands: list[dict[str, Any]]) -> str:
    """The commands as one line (the `action` of DESIGN.md §3)."""
    if not commands:
        return "nothing to do: all replicas are healthy"
    parts: list[str] = []
    prev_host: str | None = None
    for c in commands:
        if c["host"] and c["host"] != prev_host and parts:
            parts.append(f"; then on the host of replica {c['host']}: {c['command']}")
        elif parts:
            parts.append(f" && {c['command']}" if c["host"] else f"; {c['command']}")
        else:
            parts.append(c["command"])
            if c["host"]:
                parts.append(
                    f"  # on the host of replica {c['host']}, the most up-to-date survivor"
                )
            elif c["note"]:
                parts.append(f"  # {c['note']}")
        prev_host = c["host"] or prev_host
    return "".join(parts)


def next_block(doc: dict[str, Any]) -> list[str]:
    """The `next:` part of status as a pasteable shell block: one command per line, every
    explanation a comment line of its own."""
    lines = ["next:"]
    commands = doc.get("commands") or []
    if not commands:
        lines.append(f"# {doc['action']}")
        return lines
    if any("--existing" in c["command"] for c in commands):
        lines.append(f"# {PASSWORD_NOTE} (and the user from MOORAGE_USERNAME, default admin)")
    if any("https://" in c["command"] for c in commands):
        lines.append(
            "# the cluster serves HTTPS: set MOORAGE_CA_FILE to its CA "
            "('moorage ca export --data-dir D --out ca.crt' on a replica's host)"
        )
    holders = placeholders(commands)
    if holders:
        lines.append("# replace " + "; ".join(f"{k} with {v}" for k, v in holders.items()))
    prev_host: str | None = None
    for c in commands:
        if c["note"]:
            lines.append(f"# {c['note']}")
        if c["host"] and c["host"] != prev_host:
            lines.append(f"# on the host of replica {c['host']}:")
        prev_host = c["host"]
        lines.append(c["command"])
    return lines


def program() -> str:
    """How printed commands name the CLI: `moorage` when that resolves on PATH to the CLI
    running now, otherwise the running CLI's absolute path."""
    running = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if running is None or running.name != "moorage" or not os.access(running, os.X_OK):
        # `python -m moorage`: the console script next to this interpreter.
        running = Path(sys.executable).parent / "moorage"
    running = running.absolute()
    found = shutil.which("moorage")
    try:
        if found and os.path.samefile(found, running):
            return "moorage"
    except OSError:
        pass
    if running.exists():
        return shlex.quote(str(running))
    return f"{shlex.quote(sys.executable)} -m moorage"


_PROGRAM = re.compile(r"(?<![\w/.-])moorage (?=[a-z])")


def localize(doc: dict[str, Any], prog: str) -> dict[str, Any]:
    """The document with every printed command starting with `prog` (see `program`)."""
    if prog == "moorage":
        return doc

    def fix(text: str) -> str:
        return _PROGRAM.sub(lambda _: prog + " ", text)

    for c in doc.get("commands") or []:
        c["command"] = fix(c["command"])
        if c["note"]:
            c["note"] = fix(c["note"])
    for step in doc.get("procedure") or []:
        step["command"] = fix(step["command"])
    if isinstance(doc.get("action"), str):
        doc["action"] = fix(doc["action"])
    return doc


def repair_procedure(rows: list[dict[str, Any]], facts: Facts) -> list[dict[str, str]]:
    """Quorum lost: emergency repair on the most up-to-date survivor, then every other
    survivor (its etcd member answers, without a leader) destroyed and joined again."""
    survivors = [r for r in rows if r["raft_index"] is not None]
    if not survivors:
        return []
    # The order emergency-repair compares them in: newest data first (raft index here).
    best = max(survivors, key=lambda r: (r["raft_index"], r["id"]))
    urls = ",".join(r["url"] for r in rows if r["url"])
    data_dir = shlex.quote(best["data_dir"]) if best["data_dir"] else "DIR"
    steps = [
        {
            "replica_id": best["id"],
            "command": f"moorage emergency-repair --data-dir {data_dir} --existing {urls}",
        }
    ]
    best_rec = facts.replicas.get(best["id"])
    for r in survivors:
        rec = facts.replicas.get(r["id"])
        if r is best or rec is None:
            continue
        storage = best_rec.storage if best_rec else None
        for command in rejoin_procedure(rec, best["url"] or "URL", storage):
            steps.append({"replica_id": r["id"], "command": command})
    return steps


def rejoin_procedure(rec: ReplicaRecord, existing: str, storage: str | None = None) -> list[str]:
    """The commands, run on its host, that make a replica an emergency repair left out (and
    fenced) a replica of the repaired cluster `existing` again: a new replica in the same
    data directory, on the same addresses and ports. `storage`: the repaired cluster's blob
    storage path (`--storage` is added when this replica's differs)."""
    url = urllib.parse.urlsplit(rec.url)
    peer = urllib.parse.urlsplit(rec.etcd_peer_url)
    client = urllib.parse.urlsplit(rec.etcd_client_url)
    data_dir = shlex.quote(rec.data_dir)
    join = (
        f"moorage join --existing {existing} --data-dir {data_dir} "
        f"--http-addr {url.hostname}:{url.port} "
        f"--etcd-client-port {client.port} --etcd-peer-port {peer.port}"
    )
    if peer.hostname and peer.hostname != DEFAULT_ETCD_HOST:
        join += f" --etcd-host {peer.hostname}"
    if storage and rec.storage != storage:
        join += f" --storage {shlex.quote(rec.storage)}"
    return [f"moorage destroy --data-dir {data_dir}", join]
