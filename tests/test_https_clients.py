"""Real clients over HTTPS with nothing but the CA `moorage ca export` writes (DESIGN.md §7):
skopeo and podman trust it from a certs.d-style directory (`--dest-cert-dir`/`--cert-dir`
DIR/ca.crt, what /etc/containers/certs.d/HOST:PORT/ca.crt holds on a real host), oras as its CA
bundle; each fails cleanly (an x509 / certificate verify error) without it."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.process import AUTH, moorage
from harness.replica import Replica

from tests.test_clients import CREDS, build_image, image_blobs, repo_name, run

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def tls_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    r = Replica(tmp_path_factory.mktemp("https-clients") / "data", tls=True)
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def cert_dir(tls_replica: Replica, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/ca.crt from `moorage ca export --existing URL --ca-fingerprint FP`, the fingerprint
    as a replica's host prints it."""
    fp = json.loads(moorage("ca", "export", "--data-dir", str(tls_replica.data_dir), "--json")
                    .stdout)["fingerprint"]  # fmt: skip
    d = tmp_path_factory.mktemp("certs.d")
    moorage("ca", "export", "--existing", tls_replica.url, "--ca-fingerprint", fp,
            "--out", str(d / "ca.crt"))  # fmt: skip
    return d


def failing(*args: str) -> str:
    p = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert p.returncode != 0, p.stdout
    return p.stderr


def test_skopeo_over_https_with_the_exported_ca(
    tls_replica: Replica, cert_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    digest = build_image(src, "v1", "amd64", [{"etc/motd": b"over TLS\n"}], tmp_path)
    ref = f"docker://{tls_replica.host}/{repo_name('https')}:v1"
    # Without the CA: refused by skopeo's own verification, nothing pushed.
    err = failing("skopeo", "copy", "--dest-creds", CREDS, f"oci:{src}:v1", ref)
    assert "x509" in err or "certificate signed by unknown authority" in err, err
    # With only the exported CA.
    digestfile = tmp_path / "digest"
    run("skopeo", "copy", "--dest-cert-dir", str(cert_dir), "--dest-creds", CREDS,
        "--digestfile", str(digestfile), f"oci:{src}:v1", ref)  # fmt: skip
    assert digestfile.read_text().strip() == digest
    info = json.loads(run("skopeo", "inspect", "--cert-dir", str(cert_dir), "--creds", CREDS, ref))
    assert info["Digest"] == digest
    out = tmp_path / "out"
    run("skopeo", "copy", "--src-cert-dir", str(cert_dir), "--src-creds", CREDS, ref,
        f"oci:{out}:back")  # fmt: skip
    assert image_blobs(out, digest) == image_blobs(src, digest)
    err = failing("skopeo", "inspect", "--creds", CREDS, ref)
    assert "x509" in err or "certificate signed by unknown authority" in err, err


def test_podman_over_https_with_the_exported_ca(
    tls_replica: Replica, cert_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src = tmp_path / "src"
    digest = build_image(src, "v1", "amd64", [{"hello": b"podman over TLS\n"}], tmp_path)
    config_digest, _ = image_blobs(src, digest)
    runroot = Path(tempfile.mkdtemp(prefix="moorage-podman-"))  # podman wants a short path
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    podman = ["podman", "--root", str(tmp_path / "root"), "--runroot", str(runroot),
              "--tmpdir", str(tmp_path / "tmp"), "--storage-driver", "vfs"]  # fmt: skip
    image_id = run(*podman, "pull", f"oci:{src}:v1").strip().splitlines()[-1]
    ref = f"{tls_replica.host}/{repo_name('podman-https')}:v1"
    run(*podman, "tag", image_id, ref)
    err = failing(*podman, "push", "--creds", CREDS, ref)
    assert "x509" in err or "certificate signed by unknown authority" in err, err
    run(*podman, "push", "--cert-dir", str(cert_dir), "--creds", CREDS, ref)
    run(*podman, "rmi", "-f", image_id)
    run(*podman, "pull", "--cert-dir", str(cert_dir), "--creds", CREDS, ref)
    assert f"sha256:{run(*podman, 'image', 'inspect', '--format', '{{.Id}}', ref).strip()}" == (
        config_digest
    )


def test_oras_over_https_with_the_exported_ca(
    tls_replica: Replica, cert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oras Python client with the exported CA as its bundle (the oras CLI: --ca-file)."""
    import oras.client
    import requests

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.chdir(tmp_path)  # oras only pushes paths under the working directory
    (tmp_path / "note.txt").write_bytes(b"an artifact over TLS\n")
    target = f"{tls_replica.host}/{repo_name('oras-https')}:v1"

    def client(verify: bool | str) -> oras.client.OrasClient:
        c = oras.client.OrasClient(
            hostname=tls_replica.host, tls_verify=verify, auth_backend="basic"
        )
        c.auth.set_basic_auth(*AUTH)
        return c

    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        client(True).push(target, files=["note.txt"])
    trusted = client(str(cert_dir / "ca.crt"))
    assert trusted.push(target, files=["note.txt"]).status_code == 201
    pulled = trusted.pull(target, outdir=str(tmp_path / "out"))
    assert [Path(p).read_bytes() for p in pulled] == [b"an artifact over TLS\n"]
