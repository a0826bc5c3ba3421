"""The replica's own etcd member, run as a child process in its own session."""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from moorage.cluster.processes import owned_pid, terminate
from moorage.cluster.tls import legacy_message
from moorage.config import DataDir, ReplicaConfig
from moorage.errors import ConfigError, StoreUnavailable
from moorage.pki.files import TlsDir

#: How often etcd tells a watch without events its progress: the only progress without
#: events the tag caches trust (meta.tag_watch); a writer whose own change came as no event
#: waits for it.
PROGRESS_NOTIFY_INTERVAL = "100ms"

log = logging.getLogger("moorage.etcd")
ETCD_PID = "etcd"
#: etcd compacts away key versions older than this many revisions (every 5 minutes); the
#: defragmentation job (cluster.etcd_defrag) compacts to the same point before it measures.
COMPACTION_RETENTION = 100_000
#: raft entries between two etcd snapshots (see command()).
SNAPSHOT_COUNT = 10_000


def etcd_binary() -> str:
    path = shutil.which("etcd") or next(
        (p for p in ("/usr/bin/etcd", "/usr/local/bin/etcd") if shutil.which(p)), None
    )
    if path is None:
        raise ConfigError(
            "etcd is not installed: run 'make install' (or apt-get install etcd-server)"
        )
    return path


class EtcdProcess:
    def __init__(
        self,
        data_dir: DataDir,
        config: ReplicaConfig,
        initial_cluster: str | None = None,
        cluster_state: str = "new",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.extra_args = extra_args
        self.data_dir = data_dir
        self.config = config
        self.initial_cluster = (
            initial_cluster
            or config.etcd_initial_cluster
            or f"{config.etcd_name}={config.etcd_peer_url}"
        )
        self.cluster_state = (
            cluster_state if initial_cluster is not None else config.etcd_cluster_state
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls = TlsDir(data_dir.path)
        self._context: tuple[tuple[tuple[int, int, int], ...], ssl.SSLContext] | None = None

    def context(self) -> ssl.SSLContext:
        """The HTTPS client context of the health probes, made again whenever the CA,
        certificate or key file changed (a renewal, a CA rotation's bundle)."""
        stamp = tuple(_stamp(f) for f in (self.tls.ca_cert, self.tls.cert, self.tls.key))
        if self._context is None or self._context[0] != stamp:
            self._context = (stamp, self.tls.client_context())
        return self._context[1]

    def command(self) -> list[str]:
        c = self.config
        client_urls = [c.etcd_client_url]
        if c.etcd_host not in ("127.0.0.1", "localhost"):
            client_urls.append(c.etcd_advertise_client_url)
        return [
            etcd_binary(),
            "--name", c.etcd_name,
            "--data-dir", str(self.data_dir.etcd_dir),
            "--listen-client-urls", ",".join(client_urls),
            "--advertise-client-urls", client_urls[-1],
            "--listen-peer-urls", c.etcd_peer_url,
            "--initial-advertise-peer-urls", c.etcd_peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", c.cluster_id,
            # Both bound what one request may carry; the store keeps under them on purpose
            # (meta.base.TXN_OPS operations per transaction, meta.etcd.MAX_REQUEST_BYTES).
            "--max-txn-ops", "1024",
            "--max-request-bytes", str(8 * 1024 * 1024),
            "--quota-backend-bytes", str(8 * 1024 * 1024 * 1024),
            # etcd 3.4 keeps up to this many raft entries in memory between snapshots
            # (100,000 by default: ~100 MB of manifest records in a large registry); 3.6
            # made 10,000 its default for that reason.
            "--snapshot-count", str(SNAPSHOT_COUNT),
            "--auto-compaction-mode", "revision",
            "--auto-compaction-retention", str(COMPACTION_RETENTION),
            "--logger", "zap",
            # The tag caches' watches trust no other progress without events (meta.tag_watch).
            "--experimental-watch-progress-notify-interval", PROGRESS_NOTIFY_INTERVAL,
            # Mutual TLS on the client and the peer plane, always (DESIGN.md §7).
            *self.tls.etcd_args(),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        if not self.tls.exists():
            raise ConfigError(legacy_message(self.config))
        self.data_dir.log_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.run_dir.mkdir(parents=True, exist_ok=True)
        orphan = owned_pid(self.data_dir.pid_file(ETCD_PID), str(self.data_dir.etcd_dir))
        if orphan is not None:
            log.warning("stopping etcd left running by an earlier process (pid %d)", orphan)
            terminate(orphan)
        log_file = open(self.data_dir.log_dir / "etcd.log", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to our process group must not reach etcd
            )
        finally:
            log_file.close()
        self.data_dir.pid_file(ETCD_PID).write_text(f"{self.proc.pid}\n")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0, serving_only: bool = False) -> None:
        """Until etcd is healthy (has a leader); with `serving_only`, until it answers at all
        (a learner that is catching up, or a member without quorum)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if serving_only and etcd_answers(self.config.etcd_client_port, self.context()):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise self.exit_error()
            healthy, last = etcd_health(self.config.etcd_client_port, self.context())
            if healthy:
                return
            time.sleep(0.1)
        raise StoreUnavailable(f"etcd did not become healthy within {timeout:.0f} s: {last}")

    def exit_error(self) -> StoreUnavailable:
        """What to tell of an etcd that exited: a removed replica's case says what to do."""
        if self.removed_from_cluster():
            return StoreUnavailable(
                "this replica was removed from its cluster (`moorage remove`), so its etcd "
                "member will not start again; to bring it back, run `moorage destroy "
                f"--data-dir {self.data_dir.path}`, then `moorage join`"
            )
        code = self.proc.returncode if self.proc is not None else None
        return StoreUnavailable(
            f"etcd exited with code {code}; see {self.data_dir.log_dir / 'etcd.log'}"
        )

    def removed_from_cluster(self) -> bool:
        """True when etcd exited because this member was removed (it will never come back)."""
        try:
            with open(self.data_dir.log_dir / "etcd.log", "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - 16384))
                tail = fh.read()
        except OSError:
            return False
        return b"permanently removed from the cluster" in tail

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc.pid)
            self.proc.wait()
        self.data_dir.pid_file(ETCD_PID).unlink(missing_ok=True)


def etcd_health(
    client_port: int, context: ssl.SSLContext, timeout: float = 1.0
) -> tuple[bool, str]:
    """etcd's /health on the local member, over HTTPS with the replica's certificate
    (`TlsDir.client_context()`; every replica certificate names 127.0.0.1)."""
    url = f"https://127.0.0.1:{client_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        return False, str(exc)
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    return doc.get("health") == "true", str(doc.get("reason", ""))


def etcd_answers(client_port: int, context: ssl.SSLContext, timeout: float = 1.0) -> bool:
    url = f"https://127.0.0.1:{client_port}/version"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context):
            return True
    except (OSError, ValueError):
        return False


def _stamp(path: object) -> tuple[int, int, int]:
    try:
        st = os.stat(str(path))
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)
