"""Issue 10 item 2: a replica that is starting or catching up is reported as `starting`, with
its progress, and never recommended for removal; a stopped cluster starts with one command.
Also the pasteable `next:` block, the printed program name, and `--candidate-dir`."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from moorage.cluster.status import diagnose, localize, next_block
from moorage.config import DataDir, ReplicaConfig
from moorage.meta.etcd import Member, MemberStatus
from moorage.meta.records import HeartbeatRecord
from tests.cluster import Cluster, moorage, pull_image, push_image
from tests.unit.test_guidance import _report, healthy_facts


@pytest.fixture(autouse=True)
def _moorage_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`moorage` on PATH as `make install` puts it (printed commands then say `moorage`)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def _commands(doc: dict[str, Any]) -> list[str]:
    return [c["command"] for c in doc["commands"]]


def _no_remove(doc: dict[str, Any]) -> None:
    assert not any(" remove " in c for c in _commands(doc)), doc
    assert " remove " not in doc["action"], doc["action"]


def test_a_catching_up_replica_is_starting_not_removed() -> None:
    facts = healthy_facts(3)
    rid = "3" * 12
    # Its process answers (API 503), its etcd member follows the leader 40 entries behind,
    # no heartbeat yet since it started.
    facts.statuses[3] = MemberStatus(3, 1, 60, 2, False, 50, ())
    facts.pings[rid] = (503, "store not ready")
    del facts.heartbeats[rid]
    doc = diagnose(facts)
    assert doc["scenario"] == "replicas-unhealthy"  # what quorum says
    row = next(r for r in doc["replicas"] if r["id"] == rid)
    assert row["state"] == "starting"
    assert "40 behind the leader's" in row["progress"]
    assert "heartbeat not yet written" in row["progress"]
    _no_remove(doc)
    assert _commands(doc) == [
        f"moorage status --existing {','.join(r['url'] for r in doc['replicas'])}"
    ]
    assert doc["commands"][0]["note"].startswith(f"wait: replica {rid} (")


def test_a_learner_is_starting_and_an_old_heartbeat_is_progress() -> None:
    facts = healthy_facts(3)
    rid = "2" * 12
    facts.members[1] = Member(2, rid, facts.members[1].peer_urls, (), True)
    facts.statuses[2] = MemberStatus(2, 1, 100, 2, True, 50, ())
    facts.heartbeats[rid] = HeartbeatRecord(rid, "", facts.now - 600, True)
    doc = diagnose(facts)
    row = next(r for r in doc["replicas"] if r["id"] == rid)
    assert row["state"] == "starting", row
    assert "learner" in row["progress"]
    assert "600 s ago" in row["progress"]
    _no_remove(doc)


def test_dead_hung_or_broken_replicas_are_still_removed() -> None:
    rid = "3" * 12
    cases: list[tuple[MemberStatus | str, tuple[int, str | None], bool]] = [
        ("connection refused", (0, "refused"), False),  # dead
        (MemberStatus(3, 1, 100, 2, False, 50, ()), (0, "timed out"), False),  # hung API
        (MemberStatus(3, 0, 100, 1, False, 50, ()), (503, "no leader"), False),  # cut off
        (MemberStatus(3, 1, 100, 2, False, 50, ("NOSPACE",)), (503, "alarm"), True),
    ]
    for st, ping, fresh in cases:
        facts = healthy_facts(3)
        facts.statuses[3] = st
        facts.pings[rid] = ping
        if not fresh:
            facts.heartbeats[rid] = HeartbeatRecord(rid, "", facts.now - 60, True)
        doc = diagnose(facts)
        row = next(r for r in doc["replicas"] if r["id"] == rid)
        assert row["state"] == "unhealthy", (st, row)
        cmds = _commands(doc)
        assert cmds[0].startswith("moorage remove --existing ")
        assert f"--replica-id {rid}" in cmds[0]
        assert cmds[1] == (
            "moorage join --existing http://127.0.0.1:5000 --data-dir NEW_DIR --http-addr "
            "HOST:PORT --etcd-client-port CLIENT_PORT --etcd-peer-port PEER_PORT"
        )
    # Heartbeating, API unhealthy (a few raft entries behind, as in flight): broken, not
    # starting.
    facts = healthy_facts(3)
    facts.pings[rid] = (503, "blob storage unreadable")
    facts.statuses[3] = MemberStatus(3, 1, 97, 2, False, 50, ())
    doc = diagnose(facts)
    assert next(r for r in doc["replicas"] if r["id"] == rid)["state"] == "unhealthy"


def test_while_one_replica_starts_nothing_is_removed() -> None:
    facts = healthy_facts(5)
    facts.statuses[5] = "connection refused"
    facts.pings["5" * 12] = (0, "refused")
    facts.statuses[4] = MemberStatus(4, 1, 90, 2, False, 50, ())
    facts.pings["4" * 12] = (503, "catching up")
    del facts.heartbeats["4" * 12]
    doc = diagnose(facts)
    _no_remove(doc)
    assert [r["state"] for r in doc["replicas"]][3:] == ["starting", "unhealthy"]


def test_a_just_started_cluster_without_leader_is_starting_not_quorum_lost() -> None:
    facts = healthy_facts(3)
    for m in facts.members:
        facts.statuses[m.id] = MemberStatus(m.id, 0, 100, 2, False, 50, ())
        facts.pings[m.name] = (503, "etcd has no leader")
    doc = diagnose(facts)
    assert doc["scenario"] == "starting"
    assert all(r["state"] == "starting" for r in doc["replicas"])
    assert "no leader elected yet (3 of 3" in doc["replicas"][0]["progress"]
    assert _commands(doc)[0].startswith("moorage status --existing ")
    assert doc["procedure"] == []
    # Only one member answers: that is a lost quorum, not a start.
    facts.statuses[1] = facts.statuses[2] = "connection refused"
    facts.pings["1" * 12] = facts.pings["2" * 12] = (0, "refused")
    doc = diagnose(facts)
    assert doc["scenario"] == "quorum-lost"
    assert _commands(doc)[0].startswith("moorage emergency-repair --data-dir /srv/r2 ")


def _check_block(doc: dict[str, Any]) -> list[str]:
    """The `next:` block is pasteable: comment lines and command lines only, the same
    commands as JSON `commands`, in order; the password only by its variable's name."""
    block = next_block(doc)
    assert block[0] == "next:"
    cmds = [line for line in block[1:] if not line.startswith("# ")]
    assert cmds == _commands(doc)
    for line in cmds:
        assert "#" not in line, line
        assert "--password" not in line, line
        shlex.split(line)
    # Every placeholder a command uses is explained, in JSON and in the block.
    for word in re.findall(r"\b[A-Z][A-Z_]+(?::[A-Z]+)?\b", " ".join(cmds)):
        assert word in doc["placeholders"], word
        assert any(line.startswith("# replace ") and word in line for line in block), word
    if any("--existing" in c for c in cmds):
        assert block[1].startswith("# these commands read the admin password from MOORAGE_PASSWORD")
    return block


def test_next_block_and_join_ports_for_every_scenario() -> None:
    docs = [diagnose(healthy_facts(n)) for n in (1, 3)]
    facts = healthy_facts(3)
    facts.statuses[3] = "connection refused"
    docs.append(diagnose(facts))
    facts.statuses[2] = "connection refused"
    docs.append(diagnose(facts))
    for doc in docs:
        block = _check_block(doc)
        for c in _commands(doc):
            if " join " in c:
                assert "--etcd-client-port CLIENT_PORT" in c, c
                assert "--etcd-peer-port PEER_PORT" in c, c
        if doc["scenario"] == "quorum-lost":
            assert "# on the host of replica 111111111111:" in block
    assert next_block(docs[1]) == ["next:", "# nothing to do: all 3 replicas are healthy"]


def test_commands_name_the_program_that_runs() -> None:
    facts = healthy_facts(3)
    facts.statuses[3] = "connection refused"
    doc = localize(diagnose(facts), "/opt/x/.venv/bin/moorage")
    for c in _commands(doc):
        assert c.startswith("/opt/x/.venv/bin/moorage "), c
    assert doc["action"].startswith("/opt/x/.venv/bin/moorage remove")


def _kept(tmp_path: Path, name: str, port: int) -> DataDir:
    d = DataDir(tmp_path / name)
    d.make_dirs()
    d.save(
        ReplicaConfig(
            data_dir=str(d.path), cluster_id="c" * 32, replica_id=name * 12,
            http_addr=f"127.0.0.1:{port}", storage=str(tmp_path / "blobs"),
            etcd_client_port=port + 1, etcd_peer_port=port + 2,
        )
    )  # fmt: skip
    (d.etcd_dir / "member" / "snap").mkdir(parents=True)
    return d


def test_unreachable_prints_one_start_and_live_processes_read_as_starting(
    tmp_path: Path,
) -> None:
    from moorage.cluster.supervisor import SUPERVISOR_PID

    dirs = [_kept(tmp_path, n, p) for n, p in (("a", 5101), ("b", 5201))]
    doc, text = _report(dirs)
    assert doc["scenario"] == "unreachable"
    (cmd,) = doc["commands"]
    assert cmd["command"].endswith(f"start --data-dir {dirs[0].path},{dirs[1].path}")
    # A process runs on the first directory (its API not listening yet): starting, wait.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(dirs[0].path)]
    )
    try:
        # Until the child has exec'd, its command line is still pytest's (not the data dir's).
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        while str(dirs[0].path).encode() not in cmdline.read_bytes():
            time.sleep(0.01)
        dirs[0].pid_file(SUPERVISOR_PID).write_text(f"{proc.pid}\n")
        doc, text = _report(dirs)
        assert doc["scenario"] == "starting"
        assert doc["replicas"][0]["state"] == "starting"
        assert f"process {proc.pid} up" in text
        start, wait = doc["commands"]
        assert start["command"].endswith(f"start --data-dir {dirs[1].path}")
        assert wait["note"].startswith("wait: replica aaaaaaaaaaaa")
        assert wait["command"].endswith(
            f"status --existing http://127.0.0.1:5001,http://127.0.0.1:5002 "
            f"--data-dir {dirs[0].path},{dirs[1].path}"
        )
        # Stopped (SIGSTOP) does not come up by waiting: unreachable again.
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        assert _report(dirs)[0]["scenario"] == "unreachable"
    finally:
        proc.kill()
        proc.wait()


def test_quorum_lost_repair_carries_the_other_given_dirs(tmp_path: Path) -> None:
    from moorage.recovery.status import _with_local_facts

    facts = healthy_facts(3)
    facts.statuses[1] = facts.statuses[2] = "connection refused"
    doc = diagnose(facts)
    # The survivor's own directory (/srv/r2), two more holding replica state, one without:
    # only those with state are compared.
    kept = [_kept(tmp_path, "x", 5601), _kept(tmp_path, "y", 5701)]
    dirs = [kept[0], DataDir("/srv/r2"), DataDir(tmp_path / "gone"), kept[1]]
    doc = _with_local_facts(doc, dirs)
    repair = shlex.split(doc["commands"][0]["command"])
    assert repair[1:4] == ["emergency-repair", "--data-dir", "/srv/r2"]
    assert repair[-2:] == ["--candidate-dir", f"{kept[0].path},{kept[1].path}"]
    assert doc["procedure"][0]["command"] == doc["commands"][0]["command"]
    assert f"--candidate-dir {kept[0].path},{kept[1].path}" in doc["action"]


def test_a_failed_start_shows_only_this_runs_log(tmp_path: Path) -> None:
    d = _kept(tmp_path, "f", 5301)
    d.log_dir.mkdir(parents=True, exist_ok=True)
    stale = "replica ffffffffffff serving on http://127.0.0.1:5301"
    (d.log_dir / "moorage.log").write_text(stale + "\n")
    with open(d.lock_file, "a+") as fh:  # another process holds the replica: start fails
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = moorage("start", "--data-dir", str(d.path), check=False)
    assert out.returncode == 1
    assert "already running" in out.stderr, out.stderr
    assert stale not in out.stderr


def test_a_stopped_cluster_starts_with_one_command_and_status_never_removes(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path)
    try:
        r0 = cluster.install()
        cluster.join()
        cluster.join()
        body = push_image(r0, "start/many", "v1", "many")
        for node in cluster.nodes:
            moorage("stop", "--data-dir", str(node.data_dir))
        dirs = ",".join(str(n.data_dir) for n in cluster.nodes)
        out = moorage("status", "--existing", cluster.urls(), "--data-dir", dirs, check=False)
        assert out.returncode == 12, out.stdout
        block = out.stdout.split("next:\n", 1)[1].splitlines()
        (start,) = [line for line in block if not line.startswith("# ")]
        assert start == f"moorage start --data-dir {dirs}"

        docs: list[dict[str, Any]] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                o = moorage(
                    "status", "--existing", cluster.urls(), "--data-dir", dirs, "--json",
                    check=False,
                )  # fmt: skip
                docs.append(json.loads(o.stdout))
                time.sleep(0.3)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            started = moorage(*shlex.split(start)[1:], "--json")  # as printed
        finally:
            done.set()
            watcher.join()
        result = json.loads(started.stdout)
        assert [r["state"] for r in result["replicas"]] == ["started"] * 3
        doc = cluster.status()
        assert doc["scenario"] == "healthy"
        assert docs, "status never ran while the replicas came up"
        for d in docs:
            # Whatever the moment: never a remove, repair or destroy of a starting replica.
            _no_remove(d)
            for c in _commands(d):
                assert " emergency-repair " not in c, d
                assert " destroy " not in c, d
        assert pull_image(r0, "start/many", "v1") == body

        # Started one at a time, as the operator did: after the first, status (given
        # the directories) says to start the two others, never remove or repair anything.
        for node in cluster.nodes:
            moorage("stop", "--data-dir", str(node.data_dir))
        moorage("start", "--data-dir", str(r0.data_dir))
        # Its supervisor saw that no quorum of etcd members could answer and served at once
        # (instead of waiting out its patience for an etcd that cannot answer alone).
        assert "etcd cannot answer yet: 1 of its 3 etcd members reachable" in r0.log_tail(60)
        out = moorage("status", "--existing", cluster.urls(), "--data-dir", dirs, check=False)
        assert out.returncode in (11, 14), out.stdout  # quorum-lost (or still starting)
        block = out.stdout.split("next:\n", 1)[1].splitlines()
        cmds = [line for line in block if not line.startswith("# ")]
        rest = ",".join(str(n.data_dir) for n in cluster.nodes[1:])
        # 11 when r0's API answers the status call, 14 while its API waits for etcd.
        assert cmds[0] == f"moorage start --data-dir {rest}", out.stdout
        assert cmds[1].startswith("moorage status --existing "), out.stdout
        assert len(cmds) == 2, out.stdout
        moorage(*shlex.split(cmds[0])[1:])  # as printed
        assert cluster.wait_status("healthy")["scenario"] == "healthy"
        assert pull_image(r0, "start/many", "v1") == body
    finally:
        cluster.shutdown()


def test_status_text_rows_say_starting() -> None:
    from moorage.cli.main import status_text

    facts = healthy_facts(3)
    facts.statuses[3] = MemberStatus(3, 1, 60, 2, False, 50, ())
    facts.pings["3" * 12] = (503, "store not ready")
    del facts.heartbeats["3" * 12]
    doc = diagnose(facts)
    text = status_text(doc)
    assert "starting: raft index 60, 40 behind the leader's" in text
    assert "UNHEALTHY" not in text
    assert text.splitlines()[-1].startswith("moorage status --existing ")


def test_stopped_replicas_whose_dirs_are_given_are_started_not_repaired(tmp_path: Path) -> None:
    """Quorum lost because two replicas are stopped, their state intact (status was given
    their directories): start them, which loses nothing; never an emergency repair first.
    A replica whose process runs but whose API does not answer yet is starting: wait."""
    from moorage.cluster.supervisor import SUPERVISOR_PID
    from moorage.recovery.status import _with_local_facts

    facts = healthy_facts(3)
    for i in (2, 3):
        facts.statuses[i] = "connection refused"
        facts.pings[f"{i}" * 12] = (0, "refused")
    dirs = [_kept(tmp_path, "2", 5401), _kept(tmp_path, "3", 5501)]
    doc = _with_local_facts(diagnose(facts), dirs)
    assert doc["scenario"] == "quorum-lost"
    cmds = _commands(doc)
    assert cmds[0] == f"moorage start --data-dir {dirs[0].path},{dirs[1].path}"
    assert cmds[1].startswith("moorage status --existing ")
    assert cmds[1].endswith(f"--data-dir {dirs[0].path},{dirs[1].path}")
    assert "emergency-repair" not in doc["action"]
    _check_block(doc)

    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(dirs[0].path)]
    )
    try:
        # until it has exec'd, the child's command line is still this process's (a loaded
        # full run saw it and took the replica for not running)
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        for _ in range(500):
            if str(dirs[0].path).encode() in cmdline.read_bytes():
                break
            time.sleep(0.01)
        dirs[0].pid_file(SUPERVISOR_PID).write_text(f"{proc.pid}\n")
        doc = _with_local_facts(diagnose(facts), dirs)
        row = next(r for r in doc["replicas"] if r["id"] == "2" * 12)
        assert row["state"] == "starting"
        start, wait = doc["commands"]  # the stopped one started, the starting one awaited
        assert start["command"] == f"moorage start --data-dir {dirs[1].path}"
        assert wait["note"].startswith("wait: replica 222222222222 (process")
        _no_remove(doc)
    finally:
        proc.kill()
        proc.wait()


def test_program_is_moorage_on_path_else_the_absolute_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from moorage.cluster.status import program

    cli = Path(sys.executable).parent / "moorage"
    monkeypatch.setattr(sys, "argv", [str(cli)])
    assert program() == "moorage"  # PATH holds the venv's bin (fixture above)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert program() == str(cli.absolute())
    (tmp_path / "moorage").symlink_to(cli)  # what `make install` links as root
    assert program() == "moorage"
    other = tmp_path / "other"
    other.mkdir()
    (other / "moorage").write_text("#!/bin/sh\n")
    (other / "moorage").chmod(0o755)
    monkeypatch.setenv("PATH", str(other))  # another moorage on PATH: not ours
    assert program() == str(cli.absolute())
