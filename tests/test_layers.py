"""The layers of DESIGN.md §6 are enforced: `lint-imports` (run by `make lint`) passes on the
tree and fails on a copy of it with an upward import; no module names a higher layer's
module in a string either (an import by name, e.g. an ASGI server's "module:factory")."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
#: import-linter's own venv (`make lint` makes it: scripts/lint-imports-requirements.txt)
LINT_IMPORTS = ROOT / ".venv-lint" / "bin" / "lint-imports"


def lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}  # the tree under test, not the installed one
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("layers")
    shutil.copy(PYPROJECT, base / "pyproject.toml")
    shutil.copytree(
        ROOT / "src" / "moorage",
        base / "src" / "moorage",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return base


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # layer 0 reaching up to the HTTP layer
        ("oci/digest.py", "import moorage.api.app", "Layers"),
        # the replica's jobs (layer 3) reaching up to the process that runs them
        ("cluster/jobs.py", "from moorage.server.worker import create_app", "Layers"),
        # the replica process importing the HTTP layer its workers set up
        (
            "server/process.py",
            "import moorage.api.metrics",
            "The replica process leaves the HTTP layer to its workers",
        ),
        # the HTTP layer reaching up to the command line
        ("api/health.py", "from moorage.cli import main", "Layers"),
        # a second importer of the etcd client
        ("registry/__init__.py", "import aetcd", "Only one module imports the etcd client"),
        # the web framework below the HTTP layer
        ("storage/base.py", "import starlette", "Only the HTTP packages import the web framework"),
        # the CLI library outside the command line
        ("server/process.py", "import click", "Only the command line imports the CLI library"),
    ],
)
def test_an_upward_or_forbidden_import_fails_the_build(
    tree_copy: Path, module: str, line: str, contract: str
) -> None:
    path = tree_copy / "src" / "moorage" / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}  # added by the test\n")
    try:
        result = lint_imports(tree_copy, tree_copy / "src")
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.partition("Broken contracts")[2]
    assert contract in broken, result.stdout
    importer = "moorage." + module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert importer in broken, result.stdout


def test_a_package_in_no_layer_fails_the_build(tree_copy: Path) -> None:
    new = tree_copy / "src" / "moorage" / "gadgets.py"
    new.write_text("import moorage.oci\n")
    try:
        result = lint_imports(tree_copy, tree_copy / "src")
    finally:
        new.unlink()
    assert result.returncode != 0, result.stdout
    assert "moorage.gadgets" in result.stdout + result.stderr


def _layers() -> dict[str, int]:
    """Top-level module of moorage -> its layer's rank (0 = lowest), from pyproject."""
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    ranks: dict[str, int] = {}
    for rank, layer in enumerate(reversed(contract["layers"])):
        for name in re.split(r"[|:]", layer):
            ranks[name.strip().strip("()")] = rank
    return ranks


def _strings(tree: ast.Module) -> list[tuple[int, str]]:
    """The module's string constants, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def string_references(package: Path) -> list[str]:
    """Every string constant in `package` that names a module of a higher layer than its own."""
    ranks = _layers()
    found = []
    for path in sorted(package.rglob("*.py")):
        top = path.relative_to(package).parts[0].removesuffix(".py")
        if top not in ranks:
            continue  # moorage/__init__.py: the container, not a layer
        for lineno, text in _strings(ast.parse(path.read_text())):
            for name in re.findall(r"\bmoorage\.(\w+)", text):
                if ranks.get(name, -1) > ranks[top]:
                    found.append(f"{path.relative_to(package)}:{lineno}: {text!r}")
    return found


def test_no_module_names_a_higher_layer_in_a_string() -> None:
    assert string_references(ROOT / "src" / "moorage") == []


def test_a_higher_layer_named_by_string_is_found(tree_copy: Path) -> None:
    """What import-linter cannot see: the supervisor (layer 3) used to start the API
    (layer 4) as "moorage.api.app:create_app". Docstrings may name any module."""
    path = tree_copy / "src" / "moorage" / "cluster" / "supervisor.py"
    original = path.read_text()
    path.write_text(f'{original}\nAPP = "moorage.api.app:create_app"\n')
    try:
        found = string_references(tree_copy / "src" / "moorage")
    finally:
        path.write_text(original)
    assert len(found) == 1, found
    assert found[0].startswith("cluster/supervisor.py:")
    assert "moorage.api.app:create_app" in found[0]


#: `python -m moorage ARGS`, writing the names of the modules it imported to a file at exit.
_PROBE = (
    "import atexit, json, runpy, sys\n"
    "out, sys.argv = sys.argv[1], ['moorage', *sys.argv[2:]]\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "runpy.run_module('moorage', run_name='__main__')\n"
)


def imported_by(*args: str, tmp: Path) -> set[str]:
    """The modules a real `moorage ARGS` process imported by the time it exited."""
    out = tmp / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args],
        cwd=tmp,
        env={**os.environ, "MOORAGE_PASSWORD": "x"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    return set(json.loads(out.read_text()))


#: What the commands tests and scripts run most do not need: the etcd client, x509, the
#: web framework and the HTTP server (~0.4 s of CPU at every start, hundreds of times a run).
URL = "http://127.0.0.1:9"  # nothing answers: the command fails after its imports
HEAVY = {"aetcd", "grpc", "cryptography", "starlette", "granian", "argon2"}


@pytest.mark.parametrize(
    ("args", "reaches", "command_module"),
    [
        (["status", "--existing", URL, "--json"], "moorage.recovery.status", "status"),
        (["stop", "--data-dir", "."], "moorage.cluster.lifecycle", "replica"),
        (["user", "list", "--existing", URL], "moorage.recovery.client", "accounts"),
        (["--help"], "moorage.cli.main", None),  # lists every command: imports each module
    ],
)  # fmt: skip
def test_common_commands_import_only_what_they_use(
    args: list[str], reaches: str, command_module: str | None, tmp_path: Path
) -> None:
    from moorage.cli.main import COMMAND_MODULES

    modules = imported_by(*args, tmp=tmp_path)
    assert reaches in modules  # the command got as far as its own work
    assert modules & HEAVY == set()
    loaded = {m.removeprefix("moorage.cli.") for m in modules} & set(COMMAND_MODULES.values())
    # only the command's own module (cli.main imports status's exit codes and text lazily)
    assert loaded == ({command_module} if command_module else set(COMMAND_MODULES.values()))


def test_lifecycle_names_the_supervisor_pid_file_as_the_supervisor_does() -> None:
    from moorage.cluster import lifecycle, supervisor

    assert lifecycle.SUPERVISOR_PID == supervisor.SUPERVISOR_PID


@pytest.mark.parametrize("args", [["stop", "--data-dir", "."], ["install", "--help"]])
def test_local_replica_commands_start_without_asyncio(args: list[str], tmp_path: Path) -> None:
    """`stop` (a pid file and signals) and the argument parsing of `install`/`start`/`join`
    need no event loop: asyncio (the storage drivers', the supervisor's) is ~0.05 s of CPU
    at each of the suite's hundreds of such commands."""
    modules = imported_by(*args, tmp=tmp_path)
    assert "moorage.cli.replica" in modules
    assert "asyncio" not in modules
