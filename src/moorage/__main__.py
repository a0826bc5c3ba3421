"""`python -m moorage`: the command line.

MOORAGE_TEST_TALLY=FILE (the test suite's CPU count, tests/README or docs/ARCHITECTURE.md):
each process appends one line at exit, "COMMAND PID CPU_S OWN_S CHILDREN_S TEST" (CPU_S =
its own CPU plus its waited-for children's, e.g. etcd; TEST = the pytest test that started
it, from PYTEST_CURRENT_TEST). A process that is killed or ends with os._exit writes nothing."""

import os

if os.environ.get("MOORAGE_TEST_TALLY"):
    import atexit
    import sys

    def _tally(path: str = os.environ["MOORAGE_TEST_TALLY"]) -> None:
        t = os.times()
        own, children = t.user + t.system, t.children_user + t.children_system
        test = os.environ.get("PYTEST_CURRENT_TEST", "-").split(" ")[0]
        command = (sys.argv[1:] or ["-"])[0]
        line = f"{command} {os.getpid()} {own + children:.3f} {own:.3f} {children:.3f} {test}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    atexit.register(_tally)

from moorage.cli import main

main()
