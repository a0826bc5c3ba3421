"""The supervisor's first-start work on the store (the new cluster's CA, the cluster record,
the journal key, the admin account: `cluster.bootstrap`), run in a short-lived child process.

That work needs the etcd client (gRPC), argon2 and cryptography; done in the supervisor they
would stay in its memory (~25 MiB) for the replica's whole life. The child gets the replica's
settings and the admin password on stdin (never on its command line, which carries the data
directory as every process of a replica does) and reports a failure as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from dataclasses import asdict

from moorage import errors
from moorage.config import ReplicaConfig
from moorage.errors import MoorageError, StoreUnavailable

log = logging.getLogger("moorage.bootstrap")
TIMEOUT = 120.0


def bootstrap_in_child(config: ReplicaConfig, admin_password: str | None) -> None:
    """Run `_bootstrap` in a child process; its error is raised here with its class."""
    doc = {"config": asdict(config), "password": admin_password}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "moorage.cluster.first_start", config.data_dir],
            input=json.dumps(doc).encode(),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StoreUnavailable(
            f"the first start's store setup took over {TIMEOUT:.0f} s; is etcd healthy?"
        ) from None
    for line in proc.stderr.decode(errors="replace").splitlines():
        if line.strip():
            log.info("%s", line)  # the child's own log lines
    if proc.returncode == 0:
        return
    try:
        failure = json.loads(proc.stdout)
        kind = getattr(errors, str(failure["kind"]), MoorageError)
        message = str(failure["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = MoorageError, f"the first start's store setup failed ({proc.returncode})"
    if not (isinstance(kind, type) and issubclass(kind, MoorageError)):
        kind = MoorageError
    raise kind(message)


async def _bootstrap(config: ReplicaConfig, admin_password: str | None) -> None:
    from moorage.cluster.bootstrap import bootstrap
    from moorage.cluster.tls import client_tls, publish_ca
    from moorage.meta.etcd import EtcdCluster

    meta = EtcdCluster(config.store_endpoints, tls=client_tls(config))
    try:
        if await publish_ca(meta, config):
            log.info("stored the new cluster's CA (sealed key) in etcd")
        await bootstrap(meta, config.cluster_id, admin_password)
    finally:
        await meta.close()


def _main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    doc = json.loads(sys.stdin.read())
    raw = doc["config"]
    raw["etcd_endpoints"] = tuple(raw.get("etcd_endpoints", ()))
    try:
        asyncio.run(_bootstrap(ReplicaConfig(**raw), doc["password"]))
    except MoorageError as exc:
        print(json.dumps({"kind": type(exc).__name__, "message": str(exc)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
