"""The cluster certificate authority: keys, CSRs, certificates, fingerprints, the sealed CA key.

Pure functions over `cryptography` objects; nothing here touches the network or etcd (the
layout of the files is in `moorage.pki.files`). DESIGN.md §7 is the contract.

Certificates
------------
* The CA: ECDSA P-256, self-signed, 10 years, BasicConstraints(ca, path_len=0) critical,
  KeyUsage(digital_signature, key_cert_sign, crl_sign) critical, SubjectKeyIdentifier.
  Subject `CN=Moorage cluster CA <cluster id>, O=Moorage`.
* A replica: ECDSA P-256 key generated ON THE REPLICA'S HOST (`generate_key`, `make_csr`); only
  the CSR travels. `sign_csr` issues a certificate valid 90 days (short enough that a stolen key
  is bounded without a revocation list, long enough that `certs rotate` and the 30-day warning
  of `moorage status` leave two months to act), BasicConstraints(ca=False) critical,
  KeyUsage(digital_signature) critical, ExtendedKeyUsage(serverAuth, clientAuth) (etcd uses the
  same certificate for its client listener, its peer listener and for dialing peers; Moorage's
  etcd client presents it too), SubjectAlternativeName (the hosts, plus `CLUSTER_SAN`),
  AuthorityKeyIdentifier, SKI.
  Subject `CN=moorage-replica-<replica id>`.
* The CA signs only what its caller tells it: the SANs of the certificate are the hosts the
  caller passes (the replica's HTTP host and etcd host, from the cluster's own record of the
  replica, never from the request), the CN is `moorage-replica-<id>` for the id the caller
  passes, and a CSR that asks for any other CN or SAN, or carries a bad signature or a key that
  is not P-256, is refused with `CertificateRefused` rather than trimmed.

The CA key (decision)
---------------------
Joins must be signed "through the cluster": any replica may be the one a new replica talks to,
and after an emergency repair any single survivor must still be able to sign. So every replica
must be able to use the CA key; the question is only how it is stored.

Decision: the CA private key is kept IN ETCD, SEALED (AES-256-GCM, key derived with HKDF-SHA256
from a 32-byte random *cluster secret*), and the cluster secret is kept on every replica's disk
as `D/tls/cluster.secret` (0600, directory 0700), handed to a joining replica inside the
authenticated join answer (over HTTPS pinned to the CA fingerprint, after admin password or
join token), exactly like the rest of the cluster's identity.

Why not the plain key in etcd: every replica certificate reads all of etcd, and so does every
etcd snapshot and every `moorage backup` file; a plain CA key there would turn a leaked backup
into the power to mint peer certificates, i.e. to join the raft group and keep access after the
replica certificates were rotated. Sealed, a backup or a read-only etcd leak yields nothing.
Why not the key file copied to every replica instead: same exposure on disk (the secret is as
good as the key to whoever also reads etcd), but then rotating the CA (`certs rotate --ca`) would
need a file pushed to every host; with the sealed copy in etcd, a new CA is one transaction and
every replica sees it, while the cluster secret never changes. Why not derive it from the admin
password: token joins have no password, and a password change would have to re-seal.
What this does NOT protect against: a host whose data directory AND etcd access are both taken
(any replica) holds the CA; that is inherent to every replica being able to sign. Restore makes
a new cluster and so a new CA and a new secret; an emergency repair survivor keeps its own
`D/tls/` (certificates, secret) and the sealed key in its etcd data.
The AAD of the sealed blob binds it to the CA certificate's fingerprint, so a sealed key cannot
be swapped for another CA's sealed key under the same secret.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
REPLICA_DAYS = 90
#: `moorage status` warns this many days before a certificate expires (DESIGN.md §7).
WARN_DAYS = 30
#: Certificates start this long in the past, so a replica whose clock is a little behind the
#: signer's accepts them at once.
BACKDATE = datetime.timedelta(minutes=5)
CN_PREFIX = "moorage-replica-"
#: A DNS SAN every replica certificate carries besides its hosts. Moorage's etcd client dials
#: several members through one gRPC target (`ipv4:a:p,b:p`); gRPC then checks the server's
#: certificate against that whole target string, which no certificate can match, so the client
#: sets `grpc.ssl_target_name_override` to this name (tests/test_pki_etcd.py shows both).
#: Every replica is an equally trusted etcd server, so a shared name grants nothing new.
CLUSTER_SAN = "moorage-cluster"
SECRET_BYTES = 32
_SEAL_VERSION = b"MCK1"
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_HKDF_INFO = b"moorage ca key seal v1"


class CertificateRefused(ValueError):
    """A CSR asks for something the caller did not allow, or is not a valid P-256 CSR."""


class SealError(ValueError):
    """The sealed CA key cannot be opened with this secret, or is not this CA's key."""


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


@dataclass(frozen=True)
class CertSummary:
    subject: str
    issuer: str
    is_ca: bool
    sans: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    days_left: int
    expiring: bool
    expired: bool
    fingerprint: str
    serial: int

    def as_dict(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "is_ca": self.is_ca,
            "sans": list(self.sans),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": self.days_left,
            "expiring": self.expiring,
            "expired": self.expired,
            "fingerprint": self.fingerprint,
            "serial": f"{self.serial:x}",
        }


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def replica_cn(replica_id: str) -> str:
    return CN_PREFIX + replica_id


def san_for(host: str) -> x509.GeneralName:
    """An IP address SAN for an IP literal (etcd checks peer IPs against IP SANs), else DNS."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if not host:
        raise CertificateRefused("empty host name")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        name = host.lower().encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise CertificateRefused(f"not a host name: {host[:100]!r}") from exc
    # No wildcards, no spaces, no empty labels: a certificate names exactly one host.
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise CertificateRefused(f"not a host name: {host[:100]!r}")
    return x509.DNSName(name)


def _sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        name = san_for(host)
        if name not in out:
            out.append(name)
    return out


def create_ca(
    cluster_id: str, now: datetime.datetime | None = None, generation: str | None = None
) -> CertificateAuthority:
    """`generation` (`certs rotate --ca`): an OU, so that two CAs trusted side by side never
    share a subject name (chain building looks issuers up by name)."""
    key = generate_key()
    start = _now(now) - BACKDATE
    ou = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, generation)] if generation else []
    cn = x509.NameAttribute(NameOID.COMMON_NAME, f"Moorage cluster CA {cluster_id}")
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Moorage"), *ou, cn])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def make_csr(
    key: ec.EllipticCurvePrivateKey, replica_id: str, hosts: Iterable[str]
) -> x509.CertificateSigningRequest:
    """The CSR a replica sends: its CN and the hosts it expects (checked, not trusted)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, replica_cn(replica_id))]))
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .sign(key, hashes.SHA256())
    )


def _csr_sans(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value)


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    replica_id: str,
    hosts: Sequence[str],
    days: int = REPLICA_DAYS,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A replica certificate for `replica_id` on `hosts` (its HTTP host and its etcd host).

    `hosts` and `replica_id` come from the caller's own record of the replica; the CSR only
    supplies the public key, and is refused if it asks for anything else.
    """
    if not csr.is_signature_valid:
        raise CertificateRefused("the CSR's signature does not match its key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise CertificateRefused("the CSR's key is not ECDSA P-256")
    if not [h for h in hosts if h.strip()]:
        raise CertificateRefused("no host to certify")
    allowed = _sans([*hosts, CLUSTER_SAN])
    expected_cn = replica_cn(replica_id)
    subject = csr.subject
    cns = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [expected_cn] or len(subject) != 1:
        raise CertificateRefused(
            f"the CSR asks for subject {subject.rfc4514_string()!r}; "
            f"only CN={expected_cn} is allowed"
        )
    extra = [n for n in _csr_sans(csr) if n not in allowed]
    if extra:
        raise CertificateRefused(
            "the CSR asks for names this replica is not known by: "
            + ", ".join(str(n.value) for n in extra)
        )
    for ext in csr.extensions:
        if not isinstance(ext.value, x509.SubjectAlternativeName):
            raise CertificateRefused(f"the CSR asks for extension {ext.oid.dotted_string}")
    start = _now(now) - BACKDATE
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(start + datetime.timedelta(days=days), ca.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, expected_cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(allowed), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def issue_replica(
    ca: CertificateAuthority, replica_id: str, hosts: Iterable[str], days: int = REPLICA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Key and certificate in one step, for the replica that holds the CA (install, restore)."""
    hosts = list(hosts)
    key = generate_key()
    return key, sign_csr(ca, make_csr(key, replica_id, hosts), replica_id, hosts, days=days)


def fingerprint(cert: x509.Certificate) -> str:
    """`sha256:` + lowercase hex SHA-256 of the DER (what `openssl x509 -outform DER | sha256sum`
    prints), DESIGN.md §7."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def summary(cert: x509.Certificate, now: datetime.datetime | None = None) -> CertSummary:
    moment = _now(now)
    try:
        sans = tuple(
            str(n.value)
            for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
    except x509.ExtensionNotFound:
        sans = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    not_after = cert.not_valid_after_utc
    left = not_after - moment
    return CertSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        is_ca=is_ca,
        sans=sans,
        not_before=cert.not_valid_before_utc,
        not_after=not_after,
        days_left=left.days,
        expiring=left < datetime.timedelta(days=WARN_DAYS),
        expired=left <= datetime.timedelta(0),
        fingerprint=fingerprint(cert),
        serial=cert.serial_number,
    )


# --- PEM ------------------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8, unencrypted: etcd cannot read an encrypted key file."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise CertificateRefused(f"not a PEM certificate signing request: {exc}") from exc


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA private key")
    return key


# --- the sealed CA key ----------------------------------------------------------------------


def new_cluster_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def _seal_key(secret: bytes) -> AESGCM:
    if len(secret) != SECRET_BYTES:
        raise SealError(f"the cluster secret must be {SECRET_BYTES} bytes")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)
    return AESGCM(derived)


def seal_ca_key(ca: CertificateAuthority, secret: bytes) -> bytes:
    """The CA key as it is stored in etcd: version, nonce, AES-256-GCM(PKCS#8 DER)."""
    der = ca.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = os.urandom(12)
    aad = _SEAL_VERSION + ca.fingerprint.encode()
    return _SEAL_VERSION + nonce + _seal_key(secret).encrypt(nonce, der, aad)


def unseal_ca_key(sealed: bytes, secret: bytes, ca_cert: x509.Certificate) -> CertificateAuthority:
    if not sealed.startswith(_SEAL_VERSION) or len(sealed) < len(_SEAL_VERSION) + 12 + 16:
        raise SealError("not a sealed Moorage CA key")
    nonce = sealed[len(_SEAL_VERSION) : len(_SEAL_VERSION) + 12]
    body = sealed[len(_SEAL_VERSION) + 12 :]
    aad = _SEAL_VERSION + fingerprint(ca_cert).encode()
    try:
        der = _seal_key(secret).decrypt(nonce, body, aad)
    except InvalidTag as exc:
        raise SealError(
            "the sealed CA key does not open with this cluster secret for this CA"
        ) from exc
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
        key.public_key().public_numbers() != ca_cert.public_key().public_numbers()  # type: ignore[union-attr]
    ):
        raise SealError("the sealed key is not the CA certificate's key")
    return CertificateAuthority(cert=ca_cert, key=key)
