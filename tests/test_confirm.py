"""Commands that delete or replace state (destroy, remove, repair, restore) print their plan,
ask `Proceed? [y/N]` on a terminal, refuse without one unless --yes, and change nothing with
--dry-run or an answer other than y. Real CLI processes, on a real pseudo-terminal."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import time
from collections.abc import Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner
from harness.process import ADMIN_PASSWORD, moorage_cmd

from tests.cluster import Cluster, Node, moorage, push_image


def test_every_option_of_every_command_has_help() -> None:
    from moorage.cli.main import main

    missing = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(p.opts)}")
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(main, ["moorage"])
    assert missing == []
    # and the walk did visit the commands this file is about, and the backup subcommands
    assert {"destroy", "remove", "repair", "restore", "emergency-repair", "backup"} <= set(
        main.commands
    )
    # and every command's --help renders
    runner = CliRunner()
    for name, cmd in main.commands.items():
        subs = [[name, sub] for sub in cmd.commands] if isinstance(cmd, click.Group) else []
        for args in [[name], *subs]:
            out = runner.invoke(main, [*args, "--help"])
            assert out.exit_code == 0, (args, out.output)
            assert "--help" in out.output
    backup = main.commands["backup"]
    assert isinstance(backup, click.Group)
    assert {"inspect", "verify"} <= set(backup.commands)


def on_terminal(args: list[str], answer: str | None, patience: float = 300) -> tuple[int, str]:
    """Run `moorage ARGS` with a pseudo-terminal as stdin/stdout; once it asks
    'Proceed? [y/N]', type `answer`. Returns (exit code, everything it printed)."""
    env = dict(os.environ, MOORAGE_PASSWORD=ADMIN_PASSWORD)
    env.pop("MOORAGE_ADMIN_PASSWORD", None)
    cmd = moorage_cmd(*args)
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the CLI
        with contextlib.suppress(BaseException):
            os.execve(cmd[0], cmd, env)
        os._exit(127)
    out = b""
    answered = False
    deadline = time.monotonic() + patience  # a safety net only, never asserted on
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if answer is not None and not answered and b"Proceed? [y/N]" in out:
                os.write(fd, answer.encode() + b"\n")
                answered = True
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("confirm"))
    c.install()
    c.join()
    c.join()
    push_image(c.nodes[0], "confirm/app", "v1", "before")
    moorage("backup", "--existing", c.nodes[0].url, "--out", str(c.root / "b1.tar"))
    # acknowledged after the backup: only the journal in blob storage holds it for a restore
    push_image(c.nodes[1], "confirm/app", "v2", "after")
    yield c
    c.shutdown()


def snapshot(c: Cluster) -> dict[str, Any]:
    """What none of these commands may change unless confirmed: the membership (replica and
    etcd member ids), each replica's files (config bytes, top-level entries), its running
    processes, and the blob storage's file list."""
    doc = c.status()
    nodes = {}
    for n in c.nodes:
        config = n.data_dir / "moorage.json"
        nodes[n.name] = {
            "entries": sorted(p.name for p in n.data_dir.iterdir()) if n.data_dir.exists() else [],
            "config": config.read_bytes() if config.exists() else None,
            "pids_alive": sorted(p for p in n.pids() if _alive(p)),
        }
    return {
        "scenario": doc["scenario"],
        "members": sorted((r["id"], r["member_id"]) for r in doc["replicas"]),
        "nodes": nodes,
        "storage": sorted(str(p.relative_to(c.storage)) for p in c.storage.rglob("*")),
    }


def _alive(pid: int) -> bool:
    from moorage.cluster.processes import alive

    return alive(pid)  # a zombie counts as dead


def commands(c: Cluster) -> dict[str, list[str]]:
    r0, r2 = c.nodes[0], c.nodes[2]
    target = Node(c.root, "restored")
    restore = ["restore", "--in", str(c.root / "b1.tar"), *target.flags()]
    return {
        "destroy": ["destroy", "--data-dir", str(r2.data_dir)],
        "remove": ["remove", "--existing", r0.url, "--replica-id", r2.replica_id],
        "repair": ["repair", "--existing", r0.url, "--data-dir", str(r2.data_dir)],
        "restore": [*restore, "--storage", str(c.storage)],
    }


def test_without_a_terminal_they_refuse_and_change_nothing(cluster: Cluster) -> None:
    before = snapshot(cluster)
    for name, args in commands(cluster).items():
        out = moorage(*args, check=False)  # stdin is not a terminal here
        assert out.returncode == 1, (name, out.stdout, out.stderr)
        assert "--yes" in out.stderr, (name, out.stderr)
        assert "--dry-run" in out.stderr
        assert "Nothing was changed" in out.stderr
        assert "plan" in out.stdout.splitlines()[0], (name, out.stdout)  # the plan came first
    assert snapshot(cluster) == before
    assert not (cluster.root / "restored").exists()


def test_dry_run_prints_the_plan_and_changes_nothing(cluster: Cluster) -> None:
    r2 = cluster.nodes[2]
    before = snapshot(cluster)
    cmds = commands(cluster)
    texts = {}
    docs = {}
    for name, args in cmds.items():
        out = moorage(*args, "--dry-run")
        texts[name] = out.stdout
        assert "dry run: nothing was changed" in out.stdout
        doc = json.loads(moorage(*args, "--dry-run", "--json").stdout)
        assert doc["dry_run"] is True
        assert doc["command"] == name
        docs[name] = doc
    assert snapshot(cluster) == before
    assert not (cluster.root / "restored").exists()

    # destroy: the files and processes it removes, blob storage kept
    assert str(r2.data_dir / "etcd") in docs["destroy"]["deletes"]
    assert str(r2.data_dir / "moorage.json") in docs["destroy"]["deletes"]
    assert {p["pid"] for p in docs["destroy"]["stops"]} <= set(r2.pids())
    assert docs["destroy"]["stops"], docs["destroy"]
    assert docs["destroy"]["keeps"] == [str(cluster.storage.resolve())]
    assert "never deleted" in texts["destroy"]
    # remove: which replica goes, whether it answers, the membership and quorum after
    (gone,) = docs["remove"]["removes"]
    assert gone["replica_id"] == r2.replica_id
    assert gone["answers"]
    assert gone["healthy"]
    assert docs["remove"]["members"] == 2
    assert docs["remove"]["needed"] == 2
    assert docs["remove"]["survives_failures_after"] == 0
    assert "2 voting member(s)" in texts["remove"]
    assert "quorum 2" in texts["remove"]
    # repair: wipes and re-syncs the etcd data under the same id
    assert docs["repair"]["wipes"] == str(r2.data_dir / "etcd")
    assert docs["repair"]["rejoins_as"]["replica_id"] == r2.replica_id
    assert "re-sync" in texts["repair"]
    assert r2.replica_id in texts["repair"]
    assert "healthy now" in texts["repair"]
    # restore: a new cluster from the backup, replaying the journal written after it
    assert docs["restore"]["new_cluster"] is True
    assert docs["restore"]["journal_entries"] > 0  # the push of v2 after the backup
    assert any("confirm/app:v2" in line for line in docs["restore"]["journal_changes"])
    n = docs["restore"]["journal_entries"]
    assert f"will replay {n} change(s)" in texts["restore"]
    assert "NEW cluster" in texts["restore"]
    lossy = moorage(*cmds["restore"], "--no-replay-journal", "--dry-run")
    assert f"{n} change(s) made after the backup will be lost" in lossy.stdout


def test_on_a_terminal_n_changes_nothing_and_y_proceeds(cluster: Cluster) -> None:
    r0, r2 = cluster.nodes[0], cluster.nodes[2]
    cmds = commands(cluster)
    before = snapshot(cluster)
    for name in ("repair", "restore", "remove", "destroy"):
        code, out = on_terminal(cmds[name], "n")
        assert "Proceed? [y/N]" in out, (name, out)
        assert code == 1, (name, out)
        assert "not confirmed: nothing was changed" in out
    assert snapshot(cluster) == before
    assert not (cluster.root / "restored").exists()

    # the default (just Enter) is no
    code, out = on_terminal(cmds["remove"], "")
    assert code == 1
    assert snapshot(cluster) == before

    pids = r2.pids()  # before the remove: a removed replica may stop by itself
    assert pids
    code, out = on_terminal(cmds["remove"], "y")
    assert code == 0, out
    assert f"removed {r2.replica_id}" in out
    doc = cluster.status([r0])
    assert r2.replica_id not in {r["id"] for r in doc["replicas"]}
    assert doc["quorum"]["members"] == 2

    code, out = on_terminal(cmds["destroy"], "y")
    assert code == 0, out
    assert "will delete:" in out
    assert f"removed {r2.data_dir / 'etcd'}" in out
    assert not (r2.data_dir / "etcd").exists()
    assert not (r2.data_dir / "moorage.json").exists()
    assert not any(_alive(p) for p in pids)
    assert (cluster.storage / "blobs").is_dir()  # blob storage is never deleted
    cluster.nodes.remove(r2)
    assert cluster.status()["scenario"] == "healthy"


def test_backup_passphrase_at_either_level(cluster: Cluster) -> None:
    """`backup --passphrase-file F inspect X` uses F (it was ignored before), and so does
    every backup subcommand; given after the subcommand it works as before."""
    secret = cluster.root / "passphrase"
    secret.write_text("correct horse battery staple\n")
    archive = cluster.root / "enc.tar"
    moorage(
        "backup", "--existing", cluster.nodes[0].url, "--out", str(archive),
        "--passphrase-file", str(secret),
    )  # fmt: skip
    without = moorage("backup", "inspect", str(archive), check=False)
    assert without.returncode == 1
    assert "encrypted" in without.stderr
    for args in (
        ["backup", "--passphrase-file", str(secret), "inspect", str(archive), "--json"],
        ["backup", "inspect", "--passphrase-file", str(secret), str(archive), "--json"],
    ):
        doc = json.loads(moorage(*args).stdout)
        assert doc["encrypted"] is True
        assert doc["counts"]["tags"] >= 1
    for args in (
        ["backup", "--passphrase-file", str(secret), "verify", str(archive)],
        ["backup", "verify", "--passphrase-file", str(secret), str(archive)],
    ):
        assert ": OK" in moorage(*args).stdout
