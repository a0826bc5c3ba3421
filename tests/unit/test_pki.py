"""pki/: the cluster CA, replica certificates, the sealed CA key and the D/tls/ files."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from moorage.pki import ca as pki
from moorage.pki.files import TlsDir

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def authority() -> pki.CertificateAuthority:
    return pki.create_ca("c0ffee", now=NOW)


def ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def test_ca_properties(authority: pki.CertificateAuthority) -> None:
    cert = authority.cert
    assert isinstance(authority.key, ec.EllipticCurvePrivateKey)
    assert authority.key.curve.name == "secp256r1"
    assert cert.subject == cert.issuer
    assert "c0ffee" in cert.subject.rfc4514_string()
    basic = ext(cert, x509.BasicConstraints)
    assert basic.critical
    assert basic.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert isinstance(usage.value, x509.KeyUsage)
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.key_encipherment
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(authority.key.public_key())
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life == datetime.timedelta(days=pki.CA_DAYS)
    assert cert.not_valid_before_utc <= NOW
    cert.verify_directly_issued_by(cert)  # self-signed, and the signature holds


def test_replica_certificate_sans_ip_and_dns(authority: pki.CertificateAuthority) -> None:
    key = pki.generate_key()
    hosts = ["registry.example.com", "10.0.0.7", "::1", "10.0.0.7"]
    csr = pki.make_csr(key, "abc123", hosts)
    cert = pki.sign_csr(authority, csr, "abc123", hosts, now=NOW)
    sans = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(sans, x509.SubjectAlternativeName)
    assert sans.get_values_for_type(x509.DNSName) == ["registry.example.com", pki.CLUSTER_SAN]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "moorage-replica-abc123"
    )
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(
        ca=False, path_length=None
    )
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    ca_ski = ext(authority.cert, x509.SubjectKeyIdentifier).value
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest
    assert cert.public_key() == key.public_key()
    assert pki.issued_by(cert, authority.cert)
    assert not pki.issued_by(cert, pki.create_ca("other").cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(
        days=pki.REPLICA_DAYS
    )


def test_bracketed_ipv6_and_host_case(authority: pki.CertificateAuthority) -> None:
    assert pki.san_for("[fe80::1]") == x509.IPAddress(ipaddress.ip_address("fe80::1"))
    assert pki.san_for("Node1.Example.COM") == x509.DNSName("node1.example.com")
    with pytest.raises(pki.CertificateRefused):
        pki.san_for(" ")
    for bad in ("*.example.com", "two words", "a..b", "-lead.example", "x" * 64, "a/b"):
        with pytest.raises(pki.CertificateRefused, match="not a host name"):
            pki.san_for(bad)
    assert pki.san_for("bücher.example") == x509.DNSName("xn--bcher-kva.example")


def test_refuses_csr_with_other_kinds_of_san(authority: pki.CertificateAuthority) -> None:
    cn = x509.NameAttribute(NameOID.COMMON_NAME, "moorage-replica-r1")
    for extra in (
        x509.UniformResourceIdentifier("spiffe://moorage/r1"),
        x509.RFC822Name("root@node1"),
        x509.DNSName("*.node1"),
    ):
        sans = x509.SubjectAlternativeName([x509.DNSName("node1"), extra])
        with pytest.raises(pki.CertificateRefused, match="not known by"):
            pki.sign_csr(authority, _csr(pki.generate_key(), [cn], sans), "r1", ["node1"], now=NOW)


def test_csr_may_ask_for_fewer_sans_but_gets_exactly_the_allowed(
    authority: pki.CertificateAuthority,
) -> None:
    key = pki.generate_key()
    csr = pki.make_csr(key, "r1", ["10.0.0.1"])
    cert = pki.sign_csr(authority, csr, "r1", ["10.0.0.1", "node1"], now=NOW)
    sans = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(sans, x509.SubjectAlternativeName)
    assert [str(v.value) for v in sans] == ["10.0.0.1", "node1", pki.CLUSTER_SAN]


@pytest.mark.parametrize(
    "asked",
    [
        ["10.0.0.1", "10.0.0.2"],  # an address of another host
        ["10.0.0.1", "evil.example.com"],  # a name the replica is not known by
        ["127.0.0.1"],
    ],
)
def test_refuses_csr_with_sans_not_allowed(
    authority: pki.CertificateAuthority, asked: list[str]
) -> None:
    csr = pki.make_csr(pki.generate_key(), "r1", asked)
    with pytest.raises(pki.CertificateRefused, match="not known by"):
        pki.sign_csr(authority, csr, "r1", ["10.0.0.1", "node1"], now=NOW)


def test_refuses_csr_with_another_cn(authority: pki.CertificateAuthority) -> None:
    csr = pki.make_csr(pki.generate_key(), "someone-else", ["10.0.0.1"])
    with pytest.raises(pki.CertificateRefused, match="only CN=moorage-replica-r1"):
        pki.sign_csr(authority, csr, "r1", ["10.0.0.1"], now=NOW)
    with pytest.raises(pki.CertificateRefused, match="no host"):
        pki.sign_csr(authority, csr, "someone-else", [" "], now=NOW)


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    name: list[x509.NameAttribute[str]],
    *extensions: x509.ExtensionType,
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(name))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def test_refuses_csr_asking_for_a_ca_or_extra_subject(authority: pki.CertificateAuthority) -> None:
    cn = x509.NameAttribute(NameOID.COMMON_NAME, "moorage-replica-r1")
    wants_ca = _csr(pki.generate_key(), [cn], x509.BasicConstraints(ca=True, path_length=None))
    with pytest.raises(pki.CertificateRefused, match="extension"):
        pki.sign_csr(authority, wants_ca, "r1", ["10.0.0.1"], now=NOW)
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Moorage")
    with pytest.raises(pki.CertificateRefused, match="subject"):
        pki.sign_csr(authority, _csr(pki.generate_key(), [cn, org]), "r1", ["10.0.0.1"], now=NOW)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(pki.CertificateRefused, match="P-256"):
        pki.sign_csr(authority, _csr(rsa_key, [cn]), "r1", ["10.0.0.1"], now=NOW)
    with pytest.raises(pki.CertificateRefused, match="PEM"):
        pki.load_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )


def test_csr_survives_pem_round_trip(authority: pki.CertificateAuthority) -> None:
    key = pki.generate_key()
    pem = pki.csr_pem(pki.make_csr(key, "r2", ["node2"]))
    cert = pki.sign_csr(authority, pki.load_csr(pem), "r2", ["node2"], now=NOW)
    assert pki.load_cert(pki.cert_pem(cert)) == cert
    assert pki.load_key(pki.key_pem(key)).private_numbers() == key.private_numbers()


def test_replica_certificate_never_outlives_the_ca(authority: pki.CertificateAuthority) -> None:
    late = authority.cert.not_valid_after_utc - datetime.timedelta(days=10)
    csr = pki.make_csr(pki.generate_key(), "r1", ["node1"])
    cert = pki.sign_csr(authority, csr, "r1", ["node1"], now=late)
    assert cert.not_valid_after_utc == authority.cert.not_valid_after_utc


def test_fingerprint_is_sha256_of_der(authority: pki.CertificateAuthority) -> None:
    der = authority.cert.public_bytes(serialization.Encoding.DER)
    fp = pki.fingerprint(authority.cert)
    assert fp == "sha256:" + hashlib.sha256(der).hexdigest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)
    assert authority.fingerprint == fp


def test_expiry_summary(authority: pki.CertificateAuthority) -> None:
    csr = pki.make_csr(pki.generate_key(), "r1", ["10.0.0.1", "node1"])
    cert = pki.sign_csr(authority, csr, "r1", ["10.0.0.1", "node1"], now=NOW)
    fresh = pki.summary(cert, now=NOW)
    assert fresh.subject == "CN=moorage-replica-r1"
    assert fresh.sans == ("10.0.0.1", "node1", pki.CLUSTER_SAN)
    assert not fresh.is_ca
    assert fresh.days_left == pki.REPLICA_DAYS - 1  # backdated by minutes: 89 full days
    assert not fresh.expiring
    assert not fresh.expired
    assert fresh.fingerprint == pki.fingerprint(cert)
    soon = pki.summary(cert, now=cert.not_valid_after_utc - datetime.timedelta(days=29))
    assert soon.expiring
    assert not soon.expired
    assert soon.days_left == 29
    edge = pki.summary(cert, now=cert.not_valid_after_utc - datetime.timedelta(days=30))
    assert not edge.expiring
    gone = pki.summary(cert, now=cert.not_valid_after_utc + datetime.timedelta(seconds=1))
    assert gone.expired
    assert gone.expiring
    doc = fresh.as_dict()
    assert doc["not_after"] == cert.not_valid_after_utc.isoformat()
    ca = pki.summary(authority.cert, now=NOW)
    assert ca.is_ca
    assert ca.days_left == pki.CA_DAYS - 1


def test_sealed_ca_key(authority: pki.CertificateAuthority) -> None:
    secret = pki.new_cluster_secret()
    sealed = pki.seal_ca_key(authority, secret)
    der = authority.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert der not in sealed
    opened = pki.unseal_ca_key(sealed, secret, authority.cert)
    assert opened.key.private_numbers() == authority.key.private_numbers()
    # An unsealed CA signs like the original.
    csr = pki.make_csr(pki.generate_key(), "r9", ["node9"])
    assert pki.issued_by(pki.sign_csr(opened, csr, "r9", ["node9"]), authority.cert)
    with pytest.raises(pki.SealError, match="does not open"):
        pki.unseal_ca_key(sealed, pki.new_cluster_secret(), authority.cert)
    with pytest.raises(pki.SealError, match="does not open"):
        pki.unseal_ca_key(sealed, secret, pki.create_ca("other").cert)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(pki.SealError):
        pki.unseal_ca_key(tampered, secret, authority.cert)
    with pytest.raises(pki.SealError, match="not a sealed"):
        pki.unseal_ca_key(b"garbage", secret, authority.cert)
    with pytest.raises(pki.SealError, match="32 bytes"):
        pki.seal_ca_key(authority, b"short")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tls_dir_layout_and_modes(
    tmp_path: Path, authority: pki.CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = os.umask(0)  # the most permissive umask: modes must still be tight
    try:
        tls = TlsDir(tmp_path / "D")
        key, cert = pki.issue_replica(authority, "r1", ["127.0.0.1"])
        seen: dict[str, int] = {}
        real_replace = os.replace

        def watching_replace(src: str | Path, dst: str | Path) -> None:
            # The temporary file, before it takes its name: already private.
            seen[Path(dst).name] = mode(Path(src))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", watching_replace)
        tls.write_ca(authority.cert)
        tls.write_key(key)
        tls.write_cert(cert)
        tls.write_secret(pki.new_cluster_secret())
    finally:
        os.umask(old)
    assert seen == {"ca.crt": 0o644, "replica.key": 0o600, "replica.crt": 0o644,
                    "cluster.secret": 0o600}  # fmt: skip
    assert mode(tls.path) == 0o700
    assert mode(tls.key) == 0o600
    assert mode(tls.secret) == 0o600
    assert mode(tls.ca_cert) == 0o644
    assert sorted(p.name for p in tls.path.iterdir()) == [
        "ca.crt",
        "cluster.secret",
        "replica.crt",
        "replica.key",
    ]  # fmt: skip: no temporary file left
    assert tls.exists()
    assert tls.read_ca() == authority.cert
    assert tls.read_cert() == cert
    assert tls.read_key().private_numbers() == key.private_numbers()
    assert len(tls.read_secret()) == pki.SECRET_BYTES
    ca_pem, key_pem, cert_pem = tls.client_material()
    assert ca_pem == pki.cert_pem(authority.cert)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert cert_pem == pki.cert_pem(cert)
    args = tls.etcd_args()
    for flag in ("--client-cert-auth", "--peer-client-cert-auth"):
        assert flag in args
    assert args[args.index("--peer-key-file") + 1] == str(tls.key)


def test_tls_dir_tightens_a_loose_directory_and_replaces_files(
    tmp_path: Path, authority: pki.CertificateAuthority
) -> None:
    tls = TlsDir(tmp_path)
    tls.path.mkdir(mode=0o755)
    os.chmod(tls.path, 0o755)
    first, _ = pki.issue_replica(authority, "r1", ["node1"])
    second, _ = pki.issue_replica(authority, "r1", ["node1"])
    tls.write_key(first)
    assert mode(tls.path) == 0o700
    tls.write_key(second)
    assert tls.read_key().private_numbers() == second.private_numbers()
    assert mode(tls.key) == 0o600


def test_ssl_contexts(tmp_path: Path, authority: pki.CertificateAuthority) -> None:
    tls = TlsDir(tmp_path)
    key, cert = pki.issue_replica(authority, "r1", ["127.0.0.1"])
    tls.write_ca(authority.cert)
    tls.write_key(key)
    tls.write_cert(cert)
    client = tls.client_context()
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert client.get_ca_certs(binary_form=True) == [
        authority.cert.public_bytes(serialization.Encoding.DER)
    ]
    internal = tls.server_context(require_client_cert=True)
    assert internal.verify_mode == ssl.CERT_REQUIRED
    assert internal.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.server_context().verify_mode == ssl.CERT_NONE
