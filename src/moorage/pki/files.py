"""The replica's TLS files under `D/tls/`.

    D/tls/              0700
      ca.crt            0644  the cluster CA certificate (etcd --trusted-ca-file, clients' trust);
                              during a CA rotation a bundle of both CAs, the signing one first
      replica.crt       0644  this replica's certificate (etcd --cert-file and --peer-cert-file)
      replica.key       0600  its key, PKCS#8 unencrypted (etcd cannot read an encrypted key)
      cluster.secret    0600  32 random bytes that open the sealed CA key kept in etcd (see ca.py)

Private files are written atomically and are never readable by anyone else, not even for an
instant: the temporary file is created with O_EXCL and mode 0600 (then fchmod'ed to 0600 in case
of an unusual umask), written, fsynced and renamed over the old one; the directory is fsynced.
"""

from __future__ import annotations

import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography (and moorage.pki.ca) load on first use: the replica's supervisor only needs
# the paths and etcd's flags, and cryptography costs it ~15 MiB of memory.

DIR_MODE = 0o700
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & PRIVATE_MODE)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_bundle(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (`ca.crt` holds two during a CA rotation, the one
    that signs first); ValueError when there is none."""
    from cryptography import x509

    certs = x509.load_pem_x509_certificates(pem)
    if not certs:
        raise ValueError("no PEM certificate")
    return certs


def bundle_pem(certs: list[x509.Certificate]) -> bytes:
    from moorage.pki.ca import cert_pem

    return b"".join(cert_pem(c) for c in certs)


@dataclass(frozen=True)
class TlsDir:
    """`D/tls/` of one replica (`root` is the data directory D)."""

    root: Path

    @property
    def path(self) -> Path:
        return self.root / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.path / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.path / "replica.crt"

    @property
    def key(self) -> Path:
        return self.path / "replica.key"

    @property
    def secret(self) -> Path:
        return self.path / "cluster.secret"

    def exists(self) -> bool:
        return self.ca_cert.is_file() and self.cert.is_file() and self.key.is_file()

    def ensure(self) -> None:
        """Create D/tls/ with mode 0700, and tighten it if it exists with a looser mode."""
        self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if stat.S_IMODE(self.path.stat().st_mode) != DIR_MODE:
            os.chmod(self.path, DIR_MODE)

    def write_ca(self, cert: x509.Certificate) -> None:
        from moorage.pki.ca import cert_pem

        self.ensure()
        write_atomic(self.ca_cert, cert_pem(cert), PUBLIC_MODE)

    def write_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        from moorage.pki.ca import key_pem

        self.ensure()
        write_atomic(self.key, key_pem(key), PRIVATE_MODE)

    def write_cert(self, cert: x509.Certificate) -> None:
        from moorage.pki.ca import cert_pem

        self.ensure()
        write_atomic(self.cert, cert_pem(cert), PUBLIC_MODE)

    def write_secret(self, secret: bytes) -> None:
        self.ensure()
        write_atomic(self.secret, secret, PRIVATE_MODE)

    def read_ca(self) -> x509.Certificate:
        from moorage.pki.ca import load_cert

        return load_cert(self.ca_cert.read_bytes())

    def read_bundle(self) -> list[x509.Certificate]:
        """Every CA this replica trusts (two during a CA rotation; the signing one first)."""
        return load_bundle(self.ca_cert.read_bytes())

    def write_bundle(self, certs: list[x509.Certificate]) -> bool:
        """Make `certs` the trusted CAs (False: the file held exactly them already)."""
        data = bundle_pem(certs)
        try:
            if self.ca_cert.read_bytes() == data:
                return False
        except OSError:
            pass
        self.ensure()
        write_atomic(self.ca_cert, data, PUBLIC_MODE)
        return True

    def read_cert(self) -> x509.Certificate:
        from moorage.pki.ca import load_cert

        return load_cert(self.cert.read_bytes())

    def read_key(self) -> ec.EllipticCurvePrivateKey:
        from moorage.pki.ca import load_key

        return load_key(self.key.read_bytes())

    def read_secret(self) -> bytes:
        return self.secret.read_bytes()

    def client_material(self) -> tuple[bytes, bytes, bytes]:
        """(CA PEM, key PEM, certificate PEM): what a gRPC client (the etcd client) presents,
        in the order of grpc.ssl_channel_credentials(root_certificates, private_key,
        certificate_chain)."""
        return self.ca_cert.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()

    def client_context(self) -> ssl.SSLContext:
        """For Python HTTPS clients of the cluster (etcd's /health and /version, replica to
        replica): trusts only the cluster CA, presents this replica's certificate, TLS 1.2+.
        Host names are checked; dial an address the certificate names (e.g. 127.0.0.1, which
        every replica certificate should carry for its loopback listener)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        """For a server with this replica's certificate, TLS 1.2+; with `require_client_cert`,
        only clients holding a cluster certificate get in (internal endpoints)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return ctx

    def etcd_args(self) -> list[str]:
        """etcd's flags for mutual TLS on both planes with this directory's files.

        etcd 3.4 (the packaged one) has no --tls-min-version; restricting --cipher-suites to
        TLS 1.2 AEAD ECDHE suites is the floor there (those suites do not exist before TLS 1.2;
        Go's TLS 1.3 suites are not configurable and stay on)."""
        ca, cert, key = str(self.ca_cert), str(self.cert), str(self.key)
        return [
            "--client-cert-auth", "--trusted-ca-file", ca,
            "--cert-file", cert, "--key-file", key,
            "--peer-client-cert-auth", "--peer-trusted-ca-file", ca,
            "--peer-cert-file", cert, "--peer-key-file", key,
            "--cipher-suites", ",".join(TLS12_SUITES),
        ]  # fmt: skip


#: ECDHE-ECDSA AEAD suites (the cluster's keys are ECDSA): TLS 1.2 only, forward secret.
TLS12_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
)
