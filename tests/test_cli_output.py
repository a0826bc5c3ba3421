"""The CLI's output, pinned: every command's `--help`, and the text, JSON and exit code of the
commands that run cheaply against one real replica, one stopped data directory and a backup.

The expected outputs live in tests/fixtures/cli_output/ (one file per case). Values that change
from run to run (ids, paths, ports, pids, revisions, times, sizes, passwords) are replaced by
placeholders; everything else must match byte for byte. A change to the CLI's output is a change
of these files, made on purpose: run with MOORAGE_PIN_UPDATE=1 to rewrite them, then review the
diff."""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from harness.process import ADMIN_PASSWORD, free_port

from tests.cluster import Node, moorage, push_image

GOLDEN = Path(__file__).parent / "fixtures" / "cli_output"
UPDATE = os.environ.get("MOORAGE_PIN_UPDATE") == "1"

# JSON keys whose numbers change from run to run.
VOLATILE_KEYS = (
    "pid|revision|raft_index|created_at|size|backup_revision|data_revision|since_revision|"
    "since_time|backup_created_at|raft_term|db_size|behind_by_revisions|elapsed|"
    "checked_at|age|blobs_bytes|bytes|after_revision|join_token_expires_at|updated_at|pushed_at|"
    "started_at|finished_at|duration"
)


class Normaliser:
    """Replaces the run's own values by stable placeholders, numbered in order of appearance."""

    def __init__(self) -> None:
        self.literal: list[tuple[str, str]] = []
        self.seen: dict[str, str] = {}

    def add(self, value: str, name: str) -> None:
        self.literal.append((value, name))
        self.literal.sort(key=lambda kv: -len(kv[0]))

    def _number(self, kind: str, value: str) -> str:
        if value not in self.seen:
            n = sum(1 for v in self.seen.values() if v.startswith(f"<{kind}-")) + 1
            self.seen[value] = f"<{kind}-{n}>"
        return self.seen[value]

    def __call__(self, text: str) -> str:
        for value, name in self.literal:
            text = text.replace(value, name)
        text = re.sub(r"mjt_[0-9a-f]{48}", "<JOIN_TOKEN>", text)
        # Volatile numbers first: the 13-16 fractional digits of a duration (0.0123...) read
        # as an id below took a placeholder number, shifting every later one (a flake).
        text = re.sub(rf'"({VOLATILE_KEYS})": -?[0-9.e+-]+', r'"\1": <N>', text)
        text = re.sub(r"; [0-9.]+ s\)$", "; <N> s)", text, flags=re.M)  # gc durations
        text = re.sub(r"\b[0-9a-f]{32}\b", lambda m: self._number("CLUSTER", m.group()), text)
        text = re.sub(r"\b[0-9a-f]{13,16}\b", lambda m: self._number("MEMBER", m.group()), text)
        text = re.sub(r"\b[0-9a-f]{12}\b", lambda m: self._number("REPLICA", m.group()), text)
        text = re.sub(r"sha256:[0-9a-f]{64}", "sha256:<DIGEST>", text)
        text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(\+00:00)?( UTC)?", "<TIME>", text)
        text = re.sub(r"\b(pid|revision|raft|revision:) +\d+", r"\1 <N>", text)
        text = re.sub(r"\bapi-\d+", "api-<N>", text)
        text = re.sub(
            r"\(\d+ bytes\)|, \d+ bytes", lambda m: re.sub(r"\d+", "<N>", m.group()), text
        )
        return text


def golden_check(name: str, text: str, mismatches: list[str]) -> None:
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    want = path.read_text() if path.exists() else f"<missing {path}>"
    if want != text:
        mismatches.append(f"--- {name}: expected\n{want}\n--- {name}: got\n{text}")


def case_text(out: subprocess.CompletedProcess[str], norm: Normaliser) -> str:
    stderr = "\n".join(
        line for line in out.stderr.splitlines() if not re.match(r"^\d{4}-\d\d-\d\d ", line)
    )  # log lines (timestamps, INFO) are not the CLI's output
    return norm(f"exit: {out.returncode}\n--- stdout\n{out.stdout}--- stderr\n{stderr}\n")


def json_keys(doc: object, prefix: str = "") -> list[str]:
    """Every key path of a JSON document (lists: the keys of their dict items)."""
    keys: list[str] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            keys.append(f"{prefix}{k}")
            keys += json_keys(v, f"{prefix}{k}.")
    elif isinstance(doc, list):
        for v in doc:
            keys += json_keys(v, f"{prefix}[].")
    return sorted(set(keys))


def test_help_of_every_command_is_pinned() -> None:
    from moorage.cli import main

    runner = CliRunner()
    mismatches: list[str] = []
    seen = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        out = runner.invoke(main, [*path, "--help"], prog_name="moorage", terminal_width=100)
        assert out.exit_code == 0, (path, out.output)
        seen.append(" ".join(path) or "moorage")
        golden_check("help-" + ("-".join(path) or "moorage"), out.output, mismatches)
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name])

    walk(main, [])
    version = runner.invoke(main, ["--version"], prog_name="moorage")
    golden_check("version", re.sub(r"version \S+", "version <V>", version.output), mismatches)
    # the walk reached every command of the CLI
    assert {"install", "run", "start", "stop", "destroy", "join", "remove", "status"} <= set(seen)
    assert {"repair", "emergency-repair", "restore", "backup inspect", "backup verify"} <= set(seen)
    assert mismatches == [], "\n".join(mismatches)


@pytest.fixture(scope="module")
def pinned_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run every cheap command once; return each case's normalised output."""
    root = tmp_path_factory.mktemp("pin")
    norm = Normaliser()
    norm.add(str(root.resolve()), "<ROOT>")
    norm.add(str(root), "<ROOT>")
    live, stopped = Node(root, "live"), Node(root, "stopped")
    restored = Node(root, "restored")
    dead_port = free_port()
    for node in (live, stopped, restored):
        for attr in ("port", "etcd_client_port", "etcd_peer_port"):
            norm.add(str(getattr(node, attr)), f"<{node.name}-{attr}>")
    norm.add(str(dead_port), "<dead-port>")
    norm.add(ADMIN_PASSWORD, "<ADMIN_PASSWORD>")
    outputs: dict[str, str] = {}

    # Commands that neither change what another prints nor depend on one still running are
    # started side by side (`start`); `run` waits for them first and runs alone. Outputs are
    # normalised in the order the cases are listed, whichever finished first.
    pool = ThreadPoolExecutor(max_workers=4)
    pending: list[tuple[str, tuple[str, ...], Future[subprocess.CompletedProcess[str]]]] = []

    def settle() -> None:
        for name, args, fut in pending:
            record(name, args, fut.result())
        pending.clear()

    def start(name: str, *args: str) -> None:
        pending.append((name, args, pool.submit(moorage, *args, check=False)))

    def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        settle()
        return record(name, args, moorage(*args, check=False))

    def record(
        name: str, args: tuple[str, ...], out: subprocess.CompletedProcess[str]
    ) -> subprocess.CompletedProcess[str]:
        outputs[name] = case_text(out, norm)
        if "--json" in args:
            try:
                doc = json.loads(out.stdout)
            except ValueError:
                doc = None
            if doc is not None:
                outputs[name + "-keys"] = norm("\n".join(json_keys(doc)) + "\n")
        return out

    blobs = str(root / "blobs")
    pw = ["--admin-password", ADMIN_PASSWORD]
    try:
        out = run("install-json", "install", *live.flags(), "--storage", blobs, *pw, "--json")
        assert out.returncode == 0, out.stderr
        live.replica_id = json.loads(out.stdout)["replica_id"]
        # the text form, with a generated password (normalised by its prefix-free pattern)
        out = run("install-text", "install", *stopped.flags(), "--storage", str(root / "b2"))
        assert out.returncode == 0, out.stderr
        pwline = re.search(r"hash\): (\S+)", out.stdout)
        assert pwline is not None
        norm.add(pwline.group(1), "<GENERATED_PASSWORD>")
        outputs["install-text"] = case_text(out, norm)
        push_image(live, "pin/app", "v1", "pin")

        start("install-again", "install", *live.flags(), *pw)
        start("install-bad-addr", "install", "--data-dir", str(root / "x"), "--http-addr", "nope")
        start("start-running-text", "start", "--data-dir", str(live.data_dir))
        start("start-running-json", "start", "--data-dir", str(live.data_dir), "--json")
        start("start-empty", "start", "--data-dir", ",")
        run("stop-text", "stop", "--data-dir", str(stopped.data_dir))
        start("stop-again-json", "stop", "--data-dir", str(stopped.data_dir), "--json")
        start("stop-not-a-data-dir", "stop", "--data-dir", str(root / "nothing"))

        existing = ["--existing", live.url]
        start("status-healthy-text", "status", *existing)
        start("status-healthy-json", "status", *existing, "--json")
        dead = ["--existing", f"http://127.0.0.1:{dead_port}"]
        start("status-unreachable-text", "status", *dead, "--data-dir", str(stopped.data_dir))
        start(
            "status-unreachable-json", "status", *dead, "--data-dir", str(stopped.data_dir),
            "--json",
        )  # fmt: skip
        start("status-unreachable-nodirs-text", "status", *dead)
        start("status-missing-existing", "status")

        for fmt in ("text", "json"):
            j = ["--json"] if fmt == "json" else []
            start(f"destroy-dry-stopped-{fmt}", "destroy", "--data-dir", str(stopped.data_dir),
                "--dry-run", *j)  # fmt: skip
            start(f"destroy-dry-live-{fmt}", "destroy", "--data-dir", str(live.data_dir),
                "--dry-run", *j)  # fmt: skip
            start(f"remove-dry-{fmt}", "remove", *existing, "--replica-id", live.replica_id,
                "--dry-run", *j)  # fmt: skip
            start(f"repair-dry-{fmt}", "repair", *existing, "--data-dir", str(live.data_dir),
                "--dry-run", *j)  # fmt: skip
            # alone: it reads the stopped replica's etcd directory
            run(f"emergency-dry-{fmt}", "emergency-repair", "--data-dir",
                str(stopped.data_dir), "--dry-run", *j)  # fmt: skip
        start("remove-unknown", "remove", *existing, "--replica-id", "000000000000", "--dry-run")
        start("remove-no-tty", "remove", *existing, "--replica-id", live.replica_id)
        start("destroy-nothing", "destroy", "--data-dir", str(root / "nothing"))

        archive = root / "pin.tar"
        run("backup-text", "backup", *existing, "--out", str(archive))
        start("backup-json", "backup", *existing, "--out", str(root / "pin2.tar"), "--json")
        start("backup-usage", "backup", *existing)
        start("backup-inspect-text", "backup", "inspect", str(archive))
        start("backup-inspect-json", "backup", "inspect", str(archive), "--json")
        start("backup-verify-text", "backup", "verify", str(archive))
        start("backup-verify-json", "backup", "verify", str(archive), "--storage", blobs, "--json")
        bad = root / "bad.tar"
        bad.write_bytes(b"not an archive")
        start("backup-verify-bad", "backup", "verify", str(bad))
        for fmt in ("text", "json"):
            j = ["--json"] if fmt == "json" else []
            start(f"restore-dry-{fmt}", "restore", "--in", str(archive), *restored.flags(),
                "--storage", blobs, "--dry-run", *j)  # fmt: skip

        # policies (each case on its own target, so they may run side by side)
        run("policy-set-text", "policy", "set", "pin", *existing, "--immutable-tags", "v*",
            "--keep-last", "3", "--keep-days", "30", "--keep-tags", "release-*",
            "--quota", "10GiB", "--allow-sparse")  # fmt: skip
        start("policy-set-json", "policy", "set", "pinj/app", *existing, "--keep-last", "1",
            "--json")  # fmt: skip
        start("policy-set-nothing", "policy", "set", "pin", *existing)
        start("policy-set-bad-quota", "policy", "set", "pin", *existing, "--quota", "lots")
        start("policy-set-quota-on-repo", "policy", "set", "pin/app", *existing, "--quota", "1GB")
        start("policy-show-text", "policy", "show", "pin/app", *existing)
        start("policy-show-json", "policy", "show", "pin", *existing, "--json")
        start("policy-apply-dry-text", "policy", "apply", "pin", *existing, "--dry-run")
        start("policy-apply-dry-json", "policy", "apply", "pin", *existing, "--dry-run", "--json")
        run("policy-list-text", "policy", "list", *existing)
        run("policy-unset-text", "policy", "unset", "pinj/app", *existing, "--retention")
        start("policy-unset-none", "policy", "unset", "nopolicy", *existing)
        # one collection at a time: each waits for the previous
        run("gc-dry-text", "gc", *existing, "--dry-run")
        run("gc-dry-json", "gc", *existing, "--dry-run", "--json")
        run("gc-run-text", "gc", *existing)  # the last result --status shows (a dry run's is not)
        run("gc-status-text", "gc", *existing, "--status")
        run("gc-bad-grace", "gc", *existing, "--grace", "soon")
        # webhooks (no push follows: nothing is delivered)
        hook = "http://127.0.0.1:9/hook"
        run("webhook-add-text", "webhook", "add", hook, *existing, "--events", "push,delete",
            "--secret", "pin-secret", "--name", "ci")  # fmt: skip
        run("webhook-add-json", "webhook", "add", hook, *existing, "--events", "pull", "--json")
        run("webhook-list-text", "webhook", "list", *existing)
        run("webhook-list-json", "webhook", "list", *existing, "--json")
        start("webhook-deliveries-text", "webhook", "deliveries", *existing)
        start("webhook-add-bad-url", "webhook", "add", "ftp://x/", *existing, "--events", "push")
        start("webhook-add-bad-event", "webhook", "add", hook, *existing, "--events", "push,tag")
        start("webhook-remove-unknown", "webhook", "remove", "000000000000", *existing)
        start("join-occupied", "join", *existing, *live.flags())
        start("join-bad-addr", "join", *existing, "--data-dir", str(root / "j"),
            "--http-addr", "nope")  # fmt: skip
        run("join-unreachable", "join", *dead, *restored.flags())  # after restore's dry runs
        start("usage-no-command")
        start("usage-unknown-command", "frobnicate")
        start("usage-missing-option", "join", *existing)
        start("usage-bad-port", "install", "--data-dir", str(root / "x"), "--http-addr",
            "127.0.0.1:1", "--etcd-client-port", "70000")  # fmt: skip
        settle()
    finally:
        pool.shutdown(wait=True)
        for node in (live, stopped, restored):
            if node.data_dir.exists():
                moorage("stop", "--data-dir", str(node.data_dir), check=False)
    return outputs


def test_command_outputs_are_pinned(pinned_outputs: dict[str, str]) -> None:
    mismatches: list[str] = []
    for name, text in sorted(pinned_outputs.items()):
        golden_check(name, text, mismatches)
    # every pinned case was produced (a case the run no longer makes is a change too)
    missing = sorted(
        p.stem
        for p in GOLDEN.glob("*.txt")
        if not p.stem.startswith(("help-", "version")) and p.stem not in pinned_outputs
    )
    assert missing == []
    assert len(pinned_outputs) > 40
    assert mismatches == [], "\n".join(mismatches)
