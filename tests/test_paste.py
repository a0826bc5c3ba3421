"""Paste tests (issue 10, item 9): every scenario built with real processes, then recovered
by pasting what `moorage status` prints into a real bash on a terminal, verbatim (only the
placeholders the output explains are filled in), until status says healthy with the fault
tolerance the cluster had before the failure. Every acknowledged push must then be there, and
no replica that was healthy may have been removed.

The README's recovery section is checked against the command shapes these tests record
(tests/paste_shapes.json; MOORAGE_PASTE_RECORD=1 rewrites it).
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, Node, moorage, pull_image, push_image
from tests.paste import (
    Operator,
    is_wait,
    kill_dir,
    load_shapes,
    record_shapes,
    shape,
    shell_env,
)

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.shutdown()


@pytest.fixture
def operator(cluster: Cluster) -> Iterator[Operator]:
    op = Operator(cluster.root, cluster.storage, [], [])
    yield op
    op.close()
    op.stop_all([n.data_dir for n in cluster.nodes])


def build(cluster: Cluster, op: Operator, replicas: int) -> list[str]:
    """Install and join `replicas` replicas (setup, not under test); their ids."""
    cluster.install()
    for _ in range(replicas - 1):
        cluster.join()
    doc = cluster.wait_status("healthy")
    assert doc["fault_tolerance"] == (replicas - 1) // 2
    op.urls = [n.url for n in cluster.nodes]
    op.dirs = [n.data_dir for n in cluster.nodes]
    return [n.replica_id for n in cluster.nodes]


def wait_scenario(cluster: Cluster, want: str, urls: list[str]) -> None:
    """Wait (as the test, not the operator) until the fault shows in status."""
    nodes = [Node(cluster.root, "probe") for _ in urls]
    for n, u in zip(nodes, urls, strict=True):
        n.port = int(u.rsplit(":", 1)[1])
    cluster.wait_status(want, nodes, timeout=60)


@pytest.mark.timeout(900)
def test_three_replicas_unhealthy_unreachable_quorum_lost_all_lost(
    cluster: Cluster, operator: Operator
) -> None:
    op = operator
    build(cluster, op, 3)
    op.push(op.urls[0], "paste/a", "v1")

    # replicas-unhealthy, its data directory intact (given to status): start it again.
    ids = [n.replica_id for n in cluster.nodes]
    op.harmed.add(ids[2])
    kill_dir(op.dirs[2], signal.SIGKILL)
    wait_scenario(cluster, "replicas-unhealthy", op.urls[:2])
    op.push(op.urls[0], "paste/a", "v2")
    doc = op.recover(want_tolerance=1)
    assert sorted(r["id"] for r in doc["replicas"]) == sorted(ids)
    assert any(c.startswith("moorage start ") for c in op.pasted), op.pasted

    # replicas-unhealthy, its host lost (data directory gone): remove it, join a new one.
    lost = cluster.nodes[1]
    op.harmed.add(lost.replica_id)
    kill_dir(lost.data_dir, signal.SIGKILL)
    shutil.rmtree(lost.data_dir)
    op.dirs.remove(lost.data_dir)
    wait_scenario(cluster, "replicas-unhealthy", [op.urls[0]])
    op.push(op.urls[0], "paste/a", "v3")
    doc = op.recover(want_tolerance=1)
    assert op.removed == [lost.replica_id]
    assert lost.url not in op.urls
    first_ids = {r["id"] for r in doc["replicas"]}
    assert first_ids >= {ids[0], ids[2]}
    op.inventory(doc)
    op.push(op.urls[-1], "paste/a", "v4")
    op.check_images(op.urls)

    # unreachable: every replica stopped, data directories intact.
    for d in op.dirs:
        out = subprocess.run(
            [sys.executable, "-m", "moorage", "stop", "--data-dir", str(d)],
            capture_output=True, text=True, timeout=120, env=shell_env(),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
    doc = op.recover(want_tolerance=1)
    assert {r["id"] for r in doc["replicas"]} == first_ids, "a replica was replaced"
    assert op.removed == [lost.replica_id]
    op.inventory(doc)
    op.push(op.urls[1], "paste/b", "v1")
    op.check_images(op.urls)

    # quorum-lost, their data directories intact (given to status): start them again.
    for d, row in zip(op.dirs[1:], doc["replicas"][1:], strict=True):
        op.harmed.add(row["id"])
        kill_dir(d, signal.SIGKILL)
    wait_scenario(cluster, "quorum-lost", op.urls[:1])
    doc = op.recover(want_tolerance=1)
    assert {r["id"] for r in doc["replicas"]} == first_ids, "a replica was replaced"
    op.harmed.clear()
    op.inventory(doc)
    op.push(op.urls[2], "paste/b", "v2")

    # quorum-lost, one survivor: two replicas SIGKILLed with their hosts (data gone; with
    # their data directories intact status says to start them, as the first scenario shows).
    survivor = op.urls[0]
    for d, row in zip(op.dirs[1:], doc["replicas"][1:], strict=True):
        op.harmed.add(row["id"])
        kill_dir(d, signal.SIGKILL)
        shutil.rmtree(d)
    op.urls, op.dirs = op.urls[:1], op.dirs[:1]
    wait_scenario(cluster, "quorum-lost", [survivor])
    doc = op.recover(want_tolerance=1)
    assert survivor in {r["url"] for r in doc["replicas"]}
    assert any(" emergency-repair " in c for c in op.pasted), op.pasted
    op.inventory(doc)
    op.check_images(op.urls)

    # all-lost with a journal: a backup, more pushes acknowledged, then every replica's
    # data directory destroyed; blob storage (with the journal) survives.
    op.backup_file = cluster.root / "backup.tar"
    out = subprocess.run(
        [sys.executable, "-m", "moorage", "backup", "--existing", op.urls[0], "--out",
         str(op.backup_file)],
        capture_output=True, text=True, timeout=120, env=shell_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    op.push(op.urls[0], "paste/c", "after-backup")
    op.push(op.urls[1], "paste/a", "v1", seed="moved")  # a tag moved after the backup
    for d in op.dirs:
        kill_dir(d, signal.SIGKILL)
        shutil.rmtree(d)
    doc = op.recover(want_tolerance=1)
    op.inventory(doc)
    op.check_images(op.urls)
    record_shapes("three", op.rounds)


@pytest.mark.timeout(900)
def test_five_replicas_two_survivors(cluster: Cluster, operator: Operator) -> None:
    """Five replicas, the leader and two others SIGKILLed: the two survivors have no leader.
    `status` prints the whole procedure (emergency repair on the most up-to-date survivor,
    then destroy and join for the other one); pasted as printed, it brings the cluster back,
    then the joins status prints restore the fault tolerance of five. (One cluster for what
    were two tests: this and test_multi_survivor's `follow status literally`.)"""
    op = operator
    cluster.install()
    for _ in range(4):
        cluster.join()
    doc = cluster.wait_status("healthy")
    assert doc["fault_tolerance"] == 2
    assert doc["quorum"] == {"members": 5, "needed": 3, "healthy": 5}
    op.urls = [n.url for n in cluster.nodes]
    op.dirs = [n.data_dir for n in cluster.nodes]
    for i in range(5):
        op.push(op.urls[i], f"paste/five{i}", "v1")
    images = {
        f"multi/app{i}": push_image(cluster.nodes[i], f"multi/app{i}", "v1", f"m{i}")
        for i in range(5)
    }

    # While the quorum exists, nothing forces an emergency repair.
    forced = moorage(
        "emergency-repair", "--data-dir", str(cluster.nodes[0].data_dir), "--yes", "--force",
        check=False,
    )  # fmt: skip
    assert forced.returncode == 1
    assert "still has a leader" in forced.stderr
    assert "nothing may force" in forced.stderr
    assert cluster.status()["scenario"] == "healthy"

    # quorum-lost, two survivors: the leader and two others SIGKILLed, two of them with their
    # hosts (data gone); the third's data directory stays, to show it is fenced at the end.
    leader = cluster.leader()
    dead = [leader, *[n for n in cluster.nodes if n is not leader][:2]]
    survivors = [n for n in cluster.nodes if n not in dead]
    for node in dead:
        op.harmed.add(node.replica_id)
        kill_dir(node.data_dir, signal.SIGKILL)
    for node in (dead[0], dead[2]):
        shutil.rmtree(node.data_dir)
    op.urls, op.dirs = [n.url for n in survivors], [n.data_dir for n in survivors]

    def procedure_ready(doc: dict[str, Any]) -> bool:
        return doc["scenario"] == "quorum-lost" and len(doc["procedure"]) == 3

    # What status prints without the data directories (the operator's view from elsewhere).
    doc = cluster.wait_status("quorum-lost", survivors, until=procedure_ready)
    steps = doc["procedure"]
    best = next(n for n in survivors if n.replica_id == steps[0]["replica_id"])
    other = next(n for n in survivors if n is not best)
    repair = shlex.split(steps[0]["command"])
    assert repair[:4] == ["moorage", "emergency-repair", "--data-dir", str(best.data_dir)]
    assert repair[4] == "--existing"
    assert sorted(repair[5].split(",")) == sorted(n.url for n in cluster.nodes)
    assert len(repair) == 6
    assert [s["replica_id"] for s in steps[1:]] == [other.replica_id] * 2
    assert steps[1]["command"] == f"moorage destroy --data-dir {other.data_dir}"
    assert steps[2]["command"].startswith(f"moorage join --existing {best.url} ")
    for step in steps:
        assert step["command"] in doc["action"]
    out = moorage("status", "--existing", cluster.urls(survivors), check=False)
    assert out.returncode == 11, out.stderr  # quorum-lost
    text = out.stdout
    # The pasteable next: block: each host named on a comment line before its commands.
    assert f"# on the host of replica {best.replica_id}:\n{steps[0]['command']}\n" in text
    assert f"# on the host of replica {other.replica_id}:\n{steps[1]['command']}\n" in text

    # The operator pastes what status prints with their data directories (the emergency
    # repair then compares the other survivor's too: --candidate-dir), round after round.
    doc = op.recover(want_tolerance=2)
    assert {best.url, other.url} <= {r["url"] for r in doc["replicas"]}
    assert op.removed == []
    # 1. The emergency repair, answered yes on the terminal. The other survivor answers
    # without a leader: it is compared, fenced, and told how to come back (2, 3: destroy and
    # join, as status printed them).
    [repaired] = [
        o for c, o in zip(op.pasted, op.outputs, strict=True) if " emergency-repair " in c
    ]
    assert "still answers" not in repaired
    assert f"on the host of replica {other.replica_id}" in repaired
    assert " && ".join(s["command"] for s in steps[1:]) in repaired
    assert "accepts writes" in repaired
    # The first healthy round: the two survivors, a cluster of epoch 2.
    first = next(r.doc for r in op.rounds if r.scenario == "healthy")
    assert first["epoch"] == 2
    assert first["quorum"] == {"members": 2, "needed": 2, "healthy": 2}
    rows = {r["url"]: r for r in first["replicas"]}
    assert set(rows) == {best.url, other.url}
    assert rows[best.url]["id"] == best.replica_id
    op.inventory(doc)
    op.check_images(op.urls)
    for repo, body in images.items():
        for node in survivors:
            assert pull_image(node, repo, "v1") == body
    after = push_image(other, "multi/after", "v1", "after")
    assert pull_image(best, "multi/after", "v1") == after
    # The dead replicas were left out: fenced if they ever come back.
    out = moorage("start", "--data-dir", str(dead[1].data_dir), check=False)
    assert out.returncode == 1
    assert "fenced" in out.stderr
    record_shapes("five", op.rounds)


# -- the README against what the paste tests print ----------------------------------------


PLACEHOLDER_WORD = re.compile(r"\b[A-Z][A-Z_]*[A-Z](?::[A-Z]+)?\b")


def readme_recovery_blocks() -> list[tuple[str, list[str], list[str] | None]]:
    """The code blocks of the README's recovery section that show a status output:
    (scenario, the commands after `next:`, the commands of the `sh` block right after it,
    i.e. what to paste, or None when no `sh` block follows)."""
    text = README.read_text()
    start = text.index("## Recovery procedures")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```([a-z]*)\n(.*?)```", text[start:end], re.S)
    out: list[tuple[str, list[str], list[str] | None]] = []
    for i, (_, body) in enumerate(blocks):
        lines = body.rstrip("\n").split("\n")
        if "next:" not in lines:
            continue
        m = re.search(r"^scenario: (\S+)", body, re.M)
        assert m, body
        printed = [ln for ln in lines[lines.index("next:") + 1 :] if not ln.startswith("#")]
        pasted = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "sh":
            pasted = [ln for ln in blocks[i + 1][1].split("\n") if ln.strip()]
        out.append((m.group(1), printed, pasted))
    return out


def test_readme_recovery_section_matches_what_status_prints() -> None:
    recorded = load_shapes()
    assert recorded, "tests/paste_shapes.json is empty: run the paste tests with recording"
    keys = [{"scenario": r["scenario"], "commands": r["commands"]} for r in recorded]
    blocks = readme_recovery_blocks()
    assert len(blocks) >= 8, blocks
    shown = []
    for scenario, printed, pasted in blocks:
        key = {"scenario": scenario, "commands": [shape(c) for c in printed]}
        assert key in keys, f"README shows a status output no paste test printed: {key}"
        shown.append(key)
        if not any(PLACEHOLDER_WORD.search(c) for c in printed):
            continue
        # What to paste: the printed commands with their placeholders filled in, nothing else.
        assert pasted is not None, f"README shows no filled-in commands after {printed}"
        assert len(pasted) == len(printed), (printed, pasted)
        for p, q in zip(printed, pasted, strict=True):
            pattern = re.escape(p)
            for h in set(PLACEHOLDER_WORD.findall(p)):
                pattern = pattern.replace(re.escape(h), r"\S+")
            assert re.fullmatch(pattern, q), (p, q)
            assert not PLACEHOLDER_WORD.search(q), q
    # Every procedure the paste tests were given (not the "wait, run status again" rounds,
    # which depend on timing) is in the README.
    for r in keys:
        if not is_wait(r["commands"]):
            assert r in shown, f"README lacks the status output of this round: {r}"


def test_shape_normalises_what_differs_between_runs() -> None:
    cmd = (
        "moorage emergency-repair --data-dir /tmp/x/r0 --existing "
        "http://127.0.0.1:4001,http://127.0.0.1:4002 --candidate-dir /tmp/x/r1,/tmp/x/r2"
    )
    assert shape(cmd) == (
        "moorage emergency-repair --data-dir DIR --existing URLS --candidate-dir DIRS"
    )
    join = (
        "moorage join --existing http://127.0.0.1:5001 --data-dir NEW_DIR --http-addr "
        "HOST:PORT --etcd-client-port 12385 --etcd-peer-port PEER_PORT"
    )
    assert shape(join) == (
        "moorage join --existing URL --data-dir NEW_DIR --http-addr HOST:PORT "
        "--etcd-client-port N --etcd-peer-port PEER_PORT"
    )
    assert shape("moorage remove --existing http://a:1 --replica-id 0123456789ab") == (
        "moorage remove --existing URL --replica-id ID"
    )
    assert shape("moorage start --data-dir /a/r1,/a/r2") == "moorage start --data-dir DIRS"


# -- regressions found by the paste tests (pure functions of the facts) --------------------


def test_status_joins_until_the_cluster_has_its_size_before_an_emergency_repair() -> None:
    """Five replicas, three lost, repaired: at 3 of 3 healthy the cluster survives 1 failure,
    not the 2 it did; status must not say `nothing to do` before it has 5 voting members."""
    from moorage.cluster.status import diagnose
    from tests.unit.test_guidance import healthy_facts

    for voters, size, joins in ((3, 5, 2), (4, 5, 1), (5, 5, 0), (3, 0, 0), (2, 0, 1), (1, 3, 2)):
        facts = healthy_facts(voters)
        facts.size = size
        doc = diagnose(facts)
        assert doc["scenario"] == "healthy"
        if not joins:
            assert doc["commands"] == [], doc["commands"]
            assert doc["action"].startswith("nothing to do")
            continue
        [join] = doc["commands"]
        assert join["command"].startswith("moorage join --existing ")
        assert "--etcd-client-port CLIENT_PORT --etcd-peer-port PEER_PORT" in join["command"]
        want = "a replica" if joins == 1 else f"{joins} replicas, one at a time"
        assert f"add {want} to survive {(max(3, size) - 1) // 2}" in join["note"], join
        if size > voters:
            assert f"it had {size} voting members before its emergency repair" in join["note"]


def test_a_replica_whose_api_has_not_seen_the_quorum_return_is_starting_not_removed() -> None:
    """Right after quorum came back, a survivor's etcd member follows the leader and is up to
    date, but its API still reports the quorum lost: status printed `remove` for it."""
    from moorage.cluster.status import diagnose
    from tests.unit.test_guidance import healthy_facts

    facts = healthy_facts(3)
    rid = "2" * 12
    facts.pings[rid] = (200, "etcd: no quorum reachable (a majority of the cluster is down)")
    doc = diagnose(facts)
    row = next(r for r in doc["replicas"] if r["id"] == rid)
    assert row["state"] == "starting", row
    assert all(" remove " not in f" {c['command']} " for c in doc["commands"]), doc["commands"]
    assert [c["command"].split()[1] for c in doc["commands"]] == ["status"]
    # A replica broken otherwise (up to date, yet its API reports something else) is removed.
    facts.pings[rid] = (503, "blob storage probe failed")
    doc = diagnose(facts)
    assert any(f"--replica-id {rid}" in c["command"] for c in doc["commands"]), doc["commands"]
