"""The paste harness (issue 10, item 9): an operator who follows `moorage status` literally.

`Shell` is a real bash on a pseudo-terminal, with the venv's bin directory on PATH (as
`make install` puts `moorage` on PATH) and the admin password in MOORAGE_PASSWORD. `Operator`
runs `moorage status` in it, takes the commands of the printed `next:` block, replaces only
the placeholders the block itself explains (NEW_DIR, HOST:PORT, CLIENT_PORT, PEER_PORT,
BACKUP_FILE, BLOB_STORAGE) and pastes every line verbatim, answering `y` when a command asks
`Proceed? [y/N]`, until status says healthy with the fault tolerance the cluster had before.

Every round (the scenario status printed and the shapes of its commands: ids, paths, URLs and
ports normalised) is recorded; tests/paste_shapes.json holds the recorded rounds, which the
README's recovery section is checked against (tests/test_paste.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.cluster import (
    ADMIN_PASSWORD,
    AUTH,
    OCI_MANIFEST,
    STATUS_EXIT_CODES,
    free_port,
    sha256,
)

SHAPES_FILE = Path(__file__).with_name("paste_shapes.json")
# MOORAGE_PASTE_RECORD=1: the paste tests rewrite SHAPES_FILE with what they saw.
RECORD = os.environ.get("MOORAGE_PASTE_RECORD") == "1"
# MOORAGE_PASTE_TRANSCRIPT=FILE: append every status output and pasted line to FILE.
TRANSCRIPT = os.environ.get("MOORAGE_PASTE_TRANSCRIPT")

PROMPT = "Proceed? [y/N]"
MARK = re.compile(r"\x1e(?:RC=(\d+))\x1e")
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]*[A-Z](?::[A-Z]+)?\b")
STATUS_CODES = STATUS_EXIT_CODES  # the exit code `moorage status` gives each scenario


class Shell:
    """An interactive bash on a pseudo-terminal (its controlling terminal), as an operator's
    terminal: commands are typed (pasted) line by line, a command that asks is answered."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            ["setsid", "-w", "-c", "bash", "--norc", "--noprofile", "--noediting", "-i"],
            stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        self.buffer = ""
        self.wait_prompt(30)

    def _read(self, deadline: float) -> str:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"shell timed out; output so far:\n{self.buffer[-4000:]}")
        ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
        if not ready:
            return ""
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            raise AssertionError(f"shell exited; output:\n{self.buffer[-4000:]}")
        return data.decode(errors="replace").replace("\r\n", "\n").replace("\r", "")

    def wait_prompt(self, timeout: float, answer: str = "y") -> tuple[int, str, int]:
        """Read until the next prompt; answer every `Proceed? [y/N]` with `answer`. Returns
        (exit status of the last command, its output, how many times it asked)."""
        deadline = time.monotonic() + timeout
        out = ""
        asked = 0
        while True:
            chunk = self._read(deadline)
            self.buffer += chunk
            out += chunk
            if out.count(PROMPT) > asked:
                asked = out.count(PROMPT)
                os.write(self.master, f"{answer}\n".encode())
            m = MARK.search(out)
            if m:
                return int(m.group(1)), out[: m.start()], asked

    def run(self, line: str, timeout: float = 300) -> tuple[int, str, int]:
        """Type `line` and Enter, as pasted; return (exit status, output, times asked)."""
        assert "\n" not in line
        os.write(self.master, line.encode() + b"\n")
        rc, out, asked = self.wait_prompt(timeout)
        # The terminal echoes the typed line first.
        echoed, _, rest = out.partition("\n")
        return rc, rest if line in echoed else out, asked

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, b"exit\n")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def shell_env() -> dict[str, str]:
    """The operator's environment: `moorage` on PATH (the venv's bin, as `make install` says),
    the admin password in MOORAGE_PASSWORD, nothing else of the tests'."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if k in ("HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "TMPDIR", "PYTHONPATH")
    }
    env.update(
        PATH=f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        MOORAGE_PASSWORD=ADMIN_PASSWORD,
        TERM="dumb",
        PS1="",
        PS2="",
        HISTFILE="/dev/null",
        PROMPT_COMMAND='printf "\\036RC=%s\\036" "$?"',
    )
    return env


# -- what status printed ------------------------------------------------------------------


@dataclass
class Status:
    command: str
    code: int
    text: str
    scenario: str
    block: list[str]  # the lines after `next:`, as printed

    @property
    def commands(self) -> list[str]:
        return [ln for ln in self.block if ln.strip() and not ln.startswith("#")]

    @property
    def comments(self) -> str:
        return "\n".join(ln for ln in self.block if ln.startswith("#"))


def parse_status(command: str, code: int, text: str) -> Status:
    m = re.search(r"^scenario: (\S+)", text, re.M)
    assert m, f"no scenario line in status output:\n{text}"
    lines = text.strip("\n").split("\n")
    assert "next:" in lines, f"no `next:` line in status output:\n{text}"
    block = lines[lines.index("next:") + 1 :]
    for ln in block:
        # Conventions: a command line carries no trailing comment that could hide a command.
        assert ln.startswith("# ") or " #" not in ln, f"trailing comment in {ln!r}"
    return Status(command, code, text, m.group(1), block)


def shape(command: str) -> str:
    """A printed command with what differs between runs normalised: replica ids -> ID,
    replica URLs -> URL (comma lists -> URLS), absolute paths -> DIR (lists -> DIRS),
    addresses -> ADDR, numbers -> N; placeholders stay."""
    out = []
    for word in shlex.split(command):
        w = re.sub(r"\b[0-9a-f]{12}\b", "ID", word)
        w = re.sub(r"https?://[\w.-]+:\d+", "URL", w)
        w = re.sub(r"(?<![\w])/[^\s,]+", "DIR", w)
        w = re.sub(r"\b\d+\.\d+\.\d+\.\d+:\d+\b", "ADDR", w)
        w = re.sub(r"^\d+$", "N", w)
        w = re.sub(r"^(URL|DIR|ID)(,\1)+$", r"\1S", w)
        out.append(w)
    return " ".join(out)


@dataclass
class Round:
    scenario: str
    commands: list[str]
    doc: dict[str, Any] = field(default_factory=dict)  # the status JSON of the round

    def key(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "commands": [shape(c) for c in self.commands]}


def is_wait(shapes: list[str]) -> bool:
    """A round whose only command is `status` again (wait): timing decides whether it shows."""
    return bool(shapes) and all(s.startswith("moorage status ") for s in shapes)


def load_shapes() -> list[dict[str, Any]]:
    if not SHAPES_FILE.exists():
        return []
    rounds: list[dict[str, Any]] = json.loads(SHAPES_FILE.read_text())["rounds"]
    return rounds


def record_shapes(test: str, rounds: list[Round]) -> None:
    """Record (MOORAGE_PASTE_RECORD=1) or check the rounds one test saw."""
    known = load_shapes()
    seen = [{"test": test, **r.key()} for r in rounds if r.commands]
    if RECORD:
        keep = [k for k in known if k["test"] != test]
        merged = keep + [s for i, s in enumerate(seen) if s not in seen[:i]]
        SHAPES_FILE.write_text(json.dumps({"rounds": merged}, indent=1) + "\n")
        return
    keys = [{k: v for k, v in r.items() if k != "test"} for r in known]
    for s in seen:
        want = {k: v for k, v in s.items() if k != "test"}
        if is_wait(want["commands"]):
            continue
        assert want in keys, (
            f"status printed commands of a shape not recorded in {SHAPES_FILE.name} (the README "
            f"is checked against it; rerun with MOORAGE_PASTE_RECORD=1 and update the README):\n"
            + json.dumps(want, indent=1)
        )


# -- the operator -------------------------------------------------------------------------


@dataclass
class Image:
    repo: str
    tag: str
    digest: str
    body: bytes


#: Text and JSON status are two runs; a state change between them makes them differ.
STATUS_PAIR_ATTEMPTS = 4


@dataclass
class Operator:
    """Follows status literally. `urls` and `dirs` are what the operator knows of the
    cluster (passed to status as --existing and --data-dir); `created` every data
    directory a pasted command created (stopped at the end)."""

    root: Path
    storage: Path
    urls: list[str]
    dirs: list[Path]
    shell: Shell = field(init=False)
    backup_file: Path | None = None
    created: list[Path] = field(default_factory=list)
    acked: list[Image] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    harmed: set[str] = field(default_factory=set)  # replica ids the test killed or lost
    destroyed: list[Path] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    pasted: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # what each pasted command printed
    _names: int = 100

    def __post_init__(self) -> None:
        self.shell = Shell(self.root, shell_env())

    def close(self) -> None:
        self.shell.close()

    def log(self, text: str) -> None:
        if TRANSCRIPT:
            with open(TRANSCRIPT, "a") as f:
                f.write(text.rstrip("\n") + "\n")

    # -- status -------------------------------------------------------------------------

    def status_command(self, with_dirs: bool = True) -> str:
        cmd = "moorage status --existing " + ",".join(self.urls)
        if with_dirs and self.dirs:
            cmd += " --data-dir " + shlex.quote(",".join(str(d) for d in self.dirs))
        return cmd

    def status(self, with_dirs: bool = True) -> tuple[Status, dict[str, Any]]:
        """Run status in the shell (text, as the operator reads it) and as JSON (for the
        test's own checks). They are two runs: when the cluster changed between them (a
        replica's view of the quorum returning), both are taken again."""
        cmd = self.status_command(with_dirs)
        for _ in range(STATUS_PAIR_ATTEMPTS):
            # The JSON form runs alongside the typed one; each waits as long for replicas
            # that do not answer.
            proc = subprocess.Popen(
                [*shlex.split(cmd), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=shell_env(),
            )  # fmt: skip
            try:
                rc, text, _ = self.shell.run(cmd, timeout=120)
                stdout, stderr = proc.communicate(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            st = parse_status(cmd, rc, text)
            self.log(f"$ {cmd}\n{text}")
            assert rc == STATUS_CODES[st.scenario], (rc, text)
            assert proc.returncode in STATUS_CODES.values(), stderr
            doc: dict[str, Any] = json.loads(stdout)
            if doc["scenario"] == st.scenario:
                break
            self.log(f"(the cluster changed between the two runs: {doc['scenario']} in JSON)")
            time.sleep(1)
        return st, doc

    # -- pasting ------------------------------------------------------------------------

    def new_dir(self) -> Path:
        self._names += 1
        d = self.root / f"r{self._names}"
        self.created.append(d)
        return d

    def substitute(self, line: str, explained: str) -> str:
        """Replace the placeholders of one command line; each must be explained by the
        block's comments (no knowledge the output did not give)."""
        values: dict[str, str] = {}
        for word in sorted(set(PLACEHOLDER.findall(line))):
            if word not in explained:
                raise AssertionError(f"{word} in {line!r} is not explained:\n{explained}")
            if word == "NEW_DIR":
                d = self.new_dir()
                values[word] = str(d)
            elif word == "HOST:PORT":
                values[word] = f"127.0.0.1:{free_port()}"
            elif word in ("CLIENT_PORT", "PEER_PORT"):
                values[word] = str(free_port())
            elif word == "BACKUP_FILE":
                assert self.backup_file is not None, f"{line}: no backup was taken"
                values[word] = str(self.backup_file)
            elif word == "BLOB_STORAGE":
                values[word] = str(self.storage)
            else:
                raise AssertionError(f"the harness cannot fill placeholder {word} in {line!r}")
        for word, value in values.items():
            line = re.sub(rf"(?<![\w]){re.escape(word)}(?![\w])", value, line)
        return line

    def paste(self, st: Status) -> None:
        """Paste every line of the `next:` block, one at a time, as printed."""
        explained = st.comments
        for line in st.block:
            if not line.strip():
                continue
            if line.startswith("#"):
                self.shell.run(line, timeout=10)
                continue
            args = shlex.split(line)
            assert args[0] == "moorage", f"printed command does not start with moorage: {line}"
            filled = self.substitute(line, explained)
            self.log(f"$ {filled}")
            self.pasted.append(filled)
            rc, out, asked = self.shell.run(filled)
            self.outputs.append(out)
            self.log(out)
            # A pasted `status` exits by scenario; every other command must succeed.
            ok = rc in STATUS_CODES.values() if args[1] == "status" else rc == 0
            assert ok, f"pasted command failed ({rc}): {filled}\n{out}"
            self.note(shlex.split(filled), asked, out)

    def note(self, args: list[str], asked: int, out: str) -> None:
        """What the operator learns from a command they ran: the replicas it added."""
        sub = args[1]
        opts = {args[i]: args[i + 1] for i in range(2, len(args) - 1) if args[i].startswith("--")}
        if sub in ("destroy", "remove", "repair", "restore", "emergency-repair"):
            assert asked == 1, f"{' '.join(args)} did not ask before acting:\n{out}"
        if sub == "remove":
            self.removed.extend(opts["--replica-id"].split(","))
        if sub == "destroy":
            self.destroyed.append(Path(opts["--data-dir"]))
        if sub in ("join", "restore"):
            url = f"http://{opts['--http-addr']}"
            if url not in self.urls:
                self.urls.append(url)
            d = Path(opts["--data-dir"])
            if d not in self.dirs:
                self.dirs.append(d)

    def recover(self, want_tolerance: int, max_rounds: int = 10) -> dict[str, Any]:
        """status -> paste until healthy with `want_tolerance`; the last status JSON."""
        for _ in range(max_rounds):
            st, doc = self.status()
            assert doc["scenario"] == st.scenario, (doc["scenario"], st.text)
            self.rounds.append(Round(st.scenario, st.commands, doc))
            if st.scenario == "healthy" and doc["fault_tolerance"] >= want_tolerance:
                assert doc["fault_tolerance"] == want_tolerance, doc
                return doc
            assert st.commands, (
                f"status prints no command, yet the cluster is not healthy with fault "
                f"tolerance {want_tolerance}:\n{st.text}"
            )
            before = len(self.removed)
            self.paste(st)
            wrong = set(self.removed[before:]) - self.harmed
            assert not wrong, (
                f"a pasted command removed replica(s) {wrong}, which the test never harmed "
                f"(healthy before the failure):\n{st.text}"
            )
            for r in doc["replicas"]:
                if r["id"] in self.removed[before:]:
                    # The operator's inventory: a removed replica is no longer the cluster's.
                    self.forget(r.get("url"), r.get("data_dir"))
            if all(shlex.split(c)[1] == "status" for c in st.commands):
                time.sleep(2)  # status said: wait, run status again
        raise AssertionError(f"not healthy after {max_rounds} rounds:\n{st.text}")

    def forget(self, url: str | None, data_dir: str | None) -> None:
        if url in self.urls:
            self.urls.remove(url)
        if data_dir and Path(data_dir) in self.dirs:
            self.dirs.remove(Path(data_dir))

    def inventory(self, doc: dict[str, Any]) -> None:
        """After a healthy status: the cluster is the replicas it lists."""
        self.urls = [r["url"] for r in doc["replicas"]]
        self.dirs = [Path(r["data_dir"]) for r in doc["replicas"]]

    # -- images ---------------------------------------------------------------------------

    def push(self, url: str, repo: str, tag: str, seed: str = "") -> Image:
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layer = f"{repo}:{tag} {seed} ".encode() * 200
        with httpx.Client(base_url=url, auth=AUTH, timeout=60) as c:
            for blob in (config, layer):
                r = c.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", content=blob)
                assert r.status_code == 201, r.text
            body = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": sha256(config),
                        "size": len(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": sha256(layer),
                            "size": len(layer),
                        }
                    ],
                }
            ).encode()
            r = c.put(
                f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
            assert r.status_code == 201, r.text
        image = Image(repo, tag, sha256(body), body)
        self.acked.append(image)
        return image

    def check_images(self, urls: list[str]) -> None:
        """Every acknowledged push is there, by tag and by digest, through every replica."""
        latest = {(im.repo, im.tag): im for im in self.acked}
        for url in urls:
            with httpx.Client(base_url=url, auth=AUTH, timeout=60) as c:
                for im in self.acked:
                    # A tag pushed again names its latest image; every image keeps its digest.
                    refs = [im.digest] + ([im.tag] if latest[im.repo, im.tag] is im else [])
                    for ref in refs:
                        r = c.get(
                            f"/v2/{im.repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST}
                        )
                        assert r.status_code == 200, (url, im.repo, ref, r.text)
                        assert r.content == im.body, (url, im.repo, ref)
                    if url == urls[0]:
                        for desc in json.loads(im.body)["layers"]:
                            b = c.get(f"/v2/{im.repo}/blobs/{desc['digest']}")
                            assert b.status_code == 200, (url, im.repo, desc)
                            assert sha256(b.content) == desc["digest"]

    # -- cleanup --------------------------------------------------------------------------

    def stop_all(self, dirs: list[Path]) -> None:
        """Teardown: SIGKILL every replica the test or a pasted command started (by pid)."""
        for d in {*dirs, *self.created, *self.dirs}:
            kill_dir(d, signal.SIGCONT)
            kill_dir(d, signal.SIGKILL)


def kill_dir(d: Path, sig: signal.Signals) -> None:
    """Signal every process whose pid file is in `d/run` (the supervisor first)."""
    pids: list[int] = []
    for f in sorted((d / "run").glob("*.pid"), key=lambda f: f.name != "moorage.pid"):
        with contextlib.suppress(ValueError, OSError):
            pids.append(int(f.read_text()))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
