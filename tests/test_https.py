"""HTTPS for the API (DESIGN.md §7): a replica serving its cluster certificate (`--tls` on
loopback), the operator's own certificate (`--tls-cert/--tls-key`, reloaded on change), TLS 1.2
as the floor, plain HTTP refused on an HTTPS port and on a non-loopback address without TLS,
`moorage ca export`, and the CLI verifying the cluster against its CA. Real processes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from harness.process import ADMIN_PASSWORD, free_port, moorage, moorage_cmd
from harness.replica import Replica

from moorage.pki import TlsDir, create_ca, fingerprint, issue_replica
from moorage.pki.ca import cert_pem, key_pem, load_cert


@pytest.fixture(scope="module")
def tls_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    r = Replica(tmp_path_factory.mktemp("https") / "data", tls=True)
    r.start()
    yield r
    r.stop()


def served_cert(port: int) -> bytes:
    """The DER certificate a replica presents (not verified: the test compares it)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(pem_file: Path) -> bytes:
    return load_cert(pem_file.read_bytes()).public_bytes(Encoding.DER)


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "127.0.0.1",
            *list(args),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_tls_replica_serves_its_cluster_certificate(tls_replica: Replica) -> None:
    assert tls_replica.url.startswith("https://")
    tls = TlsDir(tls_replica.data_dir)
    assert served_cert(tls_replica.port) == der(tls.cert)
    with tls_replica.client() as c:
        assert c.get("/_ping").json() == {"healthy": True}
        assert c.get("/v2/").status_code == 200
        ca = c.get("/api/v0/cluster/ca", auth=None)  # unauthenticated: a CA is public
    assert ca.status_code == 200
    assert ca.headers["content-type"].startswith("application/x-pem-file")
    assert ca.content == tls.ca_cert.read_bytes()
    # The replica's record and status carry the https:// URL.
    out = moorage("status", "--existing", tls_replica.url, "--data-dir", str(tls_replica.data_dir),
                  "--json")  # fmt: skip
    assert [r["url"] for r in json.loads(out.stdout)["replicas"]] == [tls_replica.url]


def test_plain_http_to_the_https_port_gets_no_answer(tls_replica: Replica) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_replica.port}/v2/", timeout=10)


def test_tls_1_2_is_the_floor(tls_replica: Replica) -> None:
    ca = str(TlsDir(tls_replica.data_dir).ca_cert)
    # SECLEVEL=0 so that the client itself would speak TLS 1.1 / 1.0: the refusal is the
    # server's (an alert), not the local OpenSSL's policy.
    for old in ("-tls1_1", "-tls1"):
        p = s_client(tls_replica.port, old, "-cipher", "DEFAULT:@SECLEVEL=0")
        assert p.returncode != 0, p.stdout
        assert "SSL alert number" in p.stderr, p.stderr
    for ok in ("-tls1_2", "-tls1_3"):
        p = s_client(tls_replica.port, ok, "-CAfile", ca, "-verify_return_error")
        assert p.returncode == 0, p.stderr
        assert "Verify return code: 0 (ok)" in p.stdout


def test_cli_verifies_the_cluster_and_ca_export(tls_replica: Replica, tmp_path: Path) -> None:
    url, d = tls_replica.url, str(tls_replica.data_dir)
    tls = TlsDir(tls_replica.data_dir)
    fp = fingerprint(load_cert(tls.ca_cert.read_bytes()))
    # Without the CA the CLI refuses the cluster and says what to do: never skips verifying.
    out = moorage("status", "--existing", url, check=False)
    assert out.returncode == 12, out.stdout + out.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in out.stdout + out.stderr
    assert "--ca-file" in out.stdout + out.stderr

    # ca export from the data directory (no network): the PEM and its fingerprint.
    exported = moorage("ca", "export", "--data-dir", d, "--json")
    doc = json.loads(exported.stdout)
    assert doc["fingerprint"] == fp
    assert doc["pem"].encode() == tls.ca_cert.read_bytes()
    printed = moorage("ca", "export", "--data-dir", d)
    assert printed.stdout.encode() == tls.ca_cert.read_bytes()
    assert fp in printed.stderr

    # ca export over the network, pinned: the right fingerprint passes, a wrong one is refused.
    pinned = tmp_path / "pinned.crt"
    out = moorage("ca", "export", "--existing", url, "--ca-fingerprint", fp, "--out", str(pinned))
    assert pinned.read_bytes() == tls.ca_cert.read_bytes()
    wrong = "sha256:" + "0" * 64
    out = moorage("ca", "export", "--existing", url, "--ca-fingerprint", wrong, check=False)
    assert out.returncode == 1
    assert "refusing" in out.stderr
    assert fp in out.stderr
    # Unpinned first contact works but says it could not verify, with the fingerprint.
    out = moorage("ca", "export", "--existing", url)
    assert out.stdout.encode() == tls.ca_cert.read_bytes()
    assert "could not be verified" in out.stderr
    assert fp in out.stderr
    # Once trusted (--ca-file), the same fetch is verified.
    out = moorage("ca", "export", "--existing", url, "--ca-file", str(pinned), "--json")
    assert json.loads(out.stdout)["trust"] == "verified"

    # With the exported CA (or the replica's data directory) the CLI talks to the cluster.
    for trust in (["--ca-file", str(pinned)], ["--data-dir", d]):
        out = moorage("status", "--existing", url, *trust, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    out = moorage("status", "--existing", url, env={"MOORAGE_CA_FILE": str(pinned)}, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # Or pinned by fingerprint on first contact, as kubeadm does; a wrong pin is refused.
    out = moorage("status", "--existing", url, "--ca-fingerprint", fp, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    out = moorage("status", "--existing", url, "--ca-fingerprint", wrong, check=False)
    assert out.returncode == 1
    assert "refusing" in out.stderr
    bad = tmp_path / "not-a-ca.crt"
    bad.write_text("nonsense\n")
    out = moorage("status", "--existing", url, "--ca-file", str(bad), check=False)
    assert out.returncode == 2
    assert "not a PEM CA certificate" in out.stderr


def write_pair(directory: Path, ca_name: str) -> tuple[Path, Path, bytes]:
    """An operator's certificate for 127.0.0.1 from its own CA: (cert, key, CA PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = create_ca(ca_name)
    key, cert = issue_replica(ca, "operator", ["127.0.0.1"])
    (directory / "tls.crt").write_bytes(cert_pem(cert))
    (directory / "tls.key").write_bytes(key_pem(key))
    return directory / "tls.crt", directory / "tls.key", cert_pem(ca.cert)


def test_operator_certificate_served_and_reloaded(tmp_path: Path) -> None:
    own = tmp_path / "own"
    cert, key, ca_pem = write_pair(own, "corporate")
    ca_file = tmp_path / "corporate-ca.crt"
    ca_file.write_bytes(ca_pem)
    r = Replica(tmp_path / "data", run_args=["--tls-cert", str(cert), "--tls-key", str(key)])
    verify = ssl.create_default_context(cafile=str(ca_file))
    r.verify = lambda: verify  # type: ignore[method-assign]
    try:
        r.start()
        assert r.url.startswith("https://")
        first = served_cert(r.port)
        assert first == der(cert)
        with r.client() as c:
            assert c.get("/v2/").status_code == 200
        # Not the cluster's certificate: a client trusting only another CA is refused.
        other = tmp_path / "other"
        _, _, other_ca = write_pair(other, "other")
        (other / "ca.crt").write_bytes(other_ca)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(
                f"{r.url}/_ping", verify=ssl.create_default_context(cafile=str(other / "ca.crt"))
            )

        # Renewal: a new pair from a new CA replaces the files; the replica serves it without
        # a restart (same supervisor pid), its API workers respawned one at a time.
        supervisor = r.pids()["moorage"]
        new_cert, new_key, new_ca = write_pair(tmp_path / "renewed", "corporate-2")
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(new_cert.read_bytes())
        wanted = der(new_cert)
        served = first
        for _ in range(300):
            with contextlib.suppress(OSError):
                served = served_cert(r.port)
            if served == wanted:
                break
            time.sleep(0.1)
        assert served == wanted, r.log_tail()
        # The old worker serves its last connections until the new one is up, then stops.
        for _ in range(300):
            if "Stopped old worker-1" in r.log.read_text(errors="replace"):
                break
            time.sleep(0.1)
        assert served_cert(r.port) == wanted, r.log_tail()
        assert r.pids()["moorage"] == supervisor
        ca_file.write_bytes(new_ca)
        verify2 = ssl.create_default_context(cafile=str(ca_file))
        assert httpx.get(f"{r.url}/_ping", verify=verify2).status_code == 200
    finally:
        r.stop()


def test_non_loopback_needs_tls_or_insecure_http(tmp_path: Path) -> None:
    # Off loopback, install serves HTTPS with the replica's cluster certificate, unasked.
    first = tmp_path / "first"
    port = free_port()
    out = moorage("install", "--data-dir", str(first), "--http-addr", f"0.0.0.0:{port}",
                  "--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port()),
                  "--admin-password", ADMIN_PASSWORD)  # fmt: skip
    try:
        assert "https://" in out.stdout, out.stdout
        verify = ssl.create_default_context(cafile=str(first / "tls" / "ca.crt"))
        assert httpx.get(f"https://127.0.0.1:{port}/_ping", verify=verify).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/_ping", timeout=5)
        config = json.loads((first / "moorage.json").read_text())
        assert config["insecure_http"] is False
    finally:
        moorage("stop", "--data-dir", str(first), check=False)

    port, client_port, peer_port = free_port(), free_port(), free_port()
    d = tmp_path / "d"
    base = ["--data-dir", str(d), "--http-addr", f"0.0.0.0:{port}",
            "--etcd-client-port", str(client_port), "--etcd-peer-port", str(peer_port)]  # fmt: skip
    out = moorage("run", *base, "--tls-cert", "/nonexistent", check=False)
    assert out.returncode == 2  # usage: the file must exist
    contradict = ["--insecure-http", "--tls"]
    out = moorage("run", *base, *contradict, check=False)
    assert out.returncode == 2
    assert "contradicts" in out.stderr

    # Accepted with --insecure-http: plain HTTP, and the setting is kept in moorage.json.
    proc = subprocess.Popen(
        moorage_cmd("run", *base, "--insecure-http"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOORAGE_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    try:
        status = 0
        for _ in range(600):
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/_ping", timeout=1).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200 or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert status == 200
        config = json.loads((d / "moorage.json").read_text())
        assert config["insecure_http"] is True
        assert config["tls"] is False
    finally:
        proc.terminate()
        proc.wait(60)


def test_install_start_stop_over_https(tmp_path: Path) -> None:
    """install/start wait for the replica's /_ping over HTTPS, verified with its own CA."""
    d = tmp_path / "d"
    port = free_port()
    out = moorage(
        "install", "--data-dir", str(d), "--http-addr", f"127.0.0.1:{port}", "--tls",
        "--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port()),
        "--admin-password", ADMIN_PASSWORD, "--json",
    )  # fmt: skip
    try:
        url = json.loads(out.stdout)["url"]
        assert url == f"https://127.0.0.1:{port}"
        assert json.loads((d / "moorage.json").read_text())["tls"] is True
        moorage("stop", "--data-dir", str(d))
        started = json.loads(moorage("start", "--data-dir", str(d), "--json").stdout)
        assert started["url"] == url
        assert "not healthy" not in started["state"]
        out = moorage("status", "--existing", url, "--data-dir", str(d), check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        moorage("stop", "--data-dir", str(d), check=False)
