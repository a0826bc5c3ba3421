"""Status from outside the cluster: ask any replica that answers; when none does, look at
the local data directories to tell `unreachable` (start them) from `all-lost` (restore)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from moorage.cluster.fence import FENCE_UNCHECKED
from moorage.cluster.guidance import (
    action_text,
    command,
    fix_storage_command,
    localize,
    placeholders,
    program,
)
from moorage.cluster.status_report import (
    StatusReport,
    replica_row,
    status_answer,
    status_document,
)
from moorage.config import DataDir
from moorage.errors import MoorageError
from moorage.recovery.client import AdminClient, ClusterUnreachable


def _usable(d: DataDir) -> tuple[bool, str]:
    if not d.path.exists():
        return False, "does not exist"
    if not d.exists():
        return False, "no moorage.json"
    if not (d.etcd_dir / "member" / "snap").is_dir():
        return False, "no etcd data"
    try:
        d.load()
    except MoorageError as exc:
        return False, str(exc)
    return True, "replica state present"


def _process_up(d: DataDir) -> int | None:
    """The pid of the replica process running on `d`, if it runs and is not stopped
    (a SIGSTOPped process is alive but will not come up by waiting)."""
    from moorage.cluster.lifecycle import running_pid

    pid = running_pid(d)
    if pid is None:
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return pid
    return None if state in ("T", "t", "Z") else pid


def start_command(dirs: list[DataDir]) -> str:
    """One `start` of several data directories (they start together)."""
    paths = [str(d.path) for d in dirs]
    if any("," in p for p in paths):
        return "moorage start " + " ".join(f"--data-dir {shlex.quote(p)}" for p in paths)
    return f"moorage start --data-dir {shlex.quote(','.join(paths))}"


def _local_processes(doc: dict[str, Any], data_dirs: list[DataDir]) -> None:
    """A replica that does not answer, whose data directory status was given: if its
    process runs (the API not listening yet), it is starting: wait; if it is stopped with
    its state intact, starting it loses nothing, unlike a remove or an emergency repair."""
    if doc.get("scenario") not in ("quorum-lost", "replicas-unhealthy"):
        return
    by_id: dict[str, DataDir] = {}
    for d in data_dirs:
        ok, _ = _usable(d)
        if ok:
            by_id[d.load().replica_id] = d
    stopped: list[DataDir] = []
    up: list[str] = []
    for r in doc.get("replicas") or []:
        mine = by_id.get(r["id"])
        if mine is None or r.get("state") != "unhealthy" or r.get("reachable"):
            continue
        pid = _process_up(mine)
        if pid is not None:
            r["state"] = "starting"
            r["progress"] = f"process {pid} up, API not answering yet"
            up.append(r["id"])
        elif running_pid_or_none(mine) is None and r.get("raft_index") is None:
            stopped.append(mine)
    urls = ",".join(r["url"] for r in doc.get("replicas") or [] if r.get("url")) or "URL"
    again = command(f"moorage status --existing {urls}", note="then run status again")
    if not up and not stopped:
        return
    commands = []
    if stopped:
        ids = ", ".join(d.load().replica_id for d in stopped)
        commands.append(
            command(
                start_command(stopped),
                note=f"replica(s) {ids} are stopped, their state intact: start them, which "
                "loses nothing (if one cannot start, run status again without its --data-dir "
                "for the next step)",
            )
        )
    if up:
        names = ", ".join(
            f"{r['id']} ({r['progress']})" for r in doc["replicas"] if r.get("state") == "starting"
        )
        again["note"] = f"wait: replica {names} is starting; run status again"
    commands.append(again)
    doc["commands"] = commands


def running_pid_or_none(d: DataDir) -> int | None:
    from moorage.cluster.lifecycle import running_pid

    return running_pid(d)


def _with_local_facts(doc: dict[str, Any], data_dirs: list[DataDir]) -> dict[str, Any]:
    """What only the operator's side knows: the data directories status was given (the
    emergency repair compares them all; `status` again inspects them too), and how the
    running CLI is named on this host."""
    if data_dirs and doc.get("epoch") is not None:
        _local_processes(doc, data_dirs)
    if data_dirs:
        given = ",".join(str(d.path) for d in data_dirs)
        for c in doc.get("commands") or []:
            argv = c["command"].split()
            if argv[1:2] == ["status"]:
                c["command"] += f" --data-dir {shlex.quote(given)}"
            elif argv[1:2] == ["emergency-repair"] and "--candidate-dir" not in argv:
                repair_dir = shlex.split(c["command"])[3]
                # The other directories holding replica state (nothing to compare in the rest).
                others = [
                    str(d.path)
                    for d in data_dirs
                    if d.path.resolve() != Path(repair_dir).resolve() and _usable(d)[0]
                ]
                if others:
                    extra = f" --candidate-dir {shlex.quote(','.join(others))}"
                    for step in doc.get("procedure") or []:
                        if step["command"] == c["command"]:
                            step["command"] += extra
                    c["command"] += extra
        if doc.get("commands"):
            doc["action"] = action_text(doc["commands"])
    if "commands" in doc:
        doc["placeholders"] = placeholders(doc["commands"])
    return localize(doc, program())


def status(client: AdminClient, data_dirs: list[DataDir]) -> StatusReport:
    """`moorage status`: the report of the replica that answers (with what the data
    directories given add), else one built from the data directories alone."""
    try:
        doc = status_answer(client.call("GET", "/api/v0/cluster/status"))
    except ClusterUnreachable as exc:
        unreachable_error, answers = str(exc), exc.answers
    else:
        if data_dirs:
            doc["data_dirs"] = [
                {"path": str(d.path), "usable": u, "detail": why}
                for d in data_dirs
                for u, why in [_usable(d)]
            ]
        return StatusReport.from_json(_with_local_facts(doc, data_dirs))

    inspected = [(d, *_usable(d)) for d in data_dirs]
    usable = [d for d, ok, _ in inspected if ok]
    up = {str(d.path): pid for d in usable if (pid := _process_up(d))}
    rows = []
    for d, ok, why in inspected:
        rid = url = cid = None
        if ok:
            cfg = d.load()
            rid, url, cid = cfg.replica_id, cfg.url, cfg.cluster_id
        pid = up.get(str(d.path))
        error = "starting: API not answering yet" if pid else why if not ok else "not running"
        rows.append(
            replica_row(
                id=rid,
                url=url,
                healthy=False,
                state="starting" if pid else "unhealthy",
                progress=f"process {pid} up, API not answering yet" if pid else None,
                reachable=False,
                leader=False,
                learner=False,
                raft_index=None,
                member_id=None,
                data_dir=str(d.path),
                error=error,
                cluster_id=cid,
            )
        )
    cluster_id = usable[0].load().cluster_id if usable else None
    if data_dirs and not usable:
        scenario = "all-lost"
        commands = [
            command(
                "moorage restore --in BACKUP_FILE --data-dir NEW_DIR --http-addr HOST:PORT "
                "--storage BLOB_STORAGE",
                note="no replica's data survives: restore the newest backup (BACKUP_FILE) into "
                "a new replica; BLOB_STORAGE is the old cluster's blob storage, whose journal "
                "restore replays (changes after the backup are lost only if it is gone); then "
                "join new replicas as status then says",
            )
        ]
    elif answers and len(answers) == sum(f": fenced: {FENCE_UNCHECKED}" in a for a in answers):
        # Every replica answers, but refuses the admin API because it cannot read the fence
        # marker in blob storage (the store is down or unreachable): nothing to start,
        # remove or repair; the store is what needs fixing.
        scenario = "unreachable"
        commands = [
            fix_storage_command(
                ",".join(client.urls),
                "each one cannot read the fence marker, so it refuses writes and the admin API",
                "pulls of what etcd and the caches hold go on",
            )
        ]
    elif up:
        # Some replicas' processes run but no API answers yet: they are starting (etcd
        # waiting for its peers, the API not listening yet). Start the stopped ones (they
        # are what the running ones wait for), then wait; never act on a starting one.
        scenario = "starting"
        urls = ",".join(client.urls)
        names = ", ".join(f"{r['id']} ({r['progress']})" for r in rows if r["state"] == "starting")
        commands = []
        not_up = [d for d in usable if str(d.path) not in up]
        if not_up:
            commands.append(
                command(
                    start_command(not_up),
                    note="the other replicas are stopped, their state intact: start them (the "
                    "running ones wait for them)",
                )
            )
        commands.append(
            command(
                f"moorage status --existing {urls}",
                note=f"wait: replica {names} is starting; run status again",
            )
        )
    elif usable:
        scenario = "unreachable"
        commands = [
            command(
                start_command(usable),
                note="every replica is stopped, its state intact: start them together (on "
                "their host; replicas on several hosts: start each host's directories there)",
            )
        ]
    else:
        scenario = "unreachable"
        commands = [
            command(
                "moorage start --data-dir ITS_DIR",
                note="no replica answers: start the replicas (on each host, ITS_DIR its data "
                "directory; several at once: --data-dir A,B,C); pass --data-dir to status to "
                "check whether their data survives",
            )
        ]
    doc = status_document(
        cluster_id=cluster_id,
        epoch=None,
        scenario=scenario,
        action=action_text(commands),
        commands=commands,
        placeholders=placeholders(commands),
        procedure=[],
        quorum={"members": None, "needed": None, "healthy": 0},
        fault_tolerance=None,  # not known: no replica answered
        replicas=rows,
        error=unreachable_error,
        urls_examined=list(client.urls),
    )
    return StatusReport.from_json(_with_local_facts(doc, data_dirs))
