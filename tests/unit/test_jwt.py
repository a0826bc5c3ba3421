"""auth/jwt.py, auth/signing_keys.py and auth/bearer.py without a server: the ES256 token
format, every forged token refused, thumbprints, sealing, rotation across two replicas of
one store, the refresh/access split, the realm and the challenge."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from moorage.auth import jwt, signing_keys
from moorage.auth.access import Access, Principal, password_mark
from moorage.auth.base import Authenticator
from moorage.auth.bearer import (
    BearerAuthenticator,
    Realm,
    TokenService,
    bearer_token,
    challenge,
    request_principal,
)
from moorage.auth.signing_keys import SigningKeys, new_record, seal, unseal
from moorage.meta.memory import MemoryMetaStore
from moorage.meta.records import SigningKeyRecord, UserRecord

SERVICE = "cluster-1"
EXPECTED = jwt.Expected("moorage", SERVICE)
SECRET = b"s" * 32


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "moorage",
        "sub": "alice",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "x",
        "access": [],
    }
    claims.update(over)
    return claims


def _raw(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    h = jwt.b64url(json.dumps(header).encode())
    p = jwt.b64url(json.dumps(claims).encode())
    return f"{h}.{p}.{jwt.b64url(sign(f'{h}.{p}'.encode()))}"


def _es256(key: ec.EllipticCurvePrivateKey) -> Any:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def test_rfc7638_thumbprint_vector() -> None:
    # RFC 7638 §3.1: the example RSA key's thumbprint.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
            "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
            "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
            "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwt.jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ec_coordinates_keep_their_leading_zeros() -> None:
    # A key whose x or y has a leading zero byte: the JWK keeps 32 bytes (RFC 7518 §6.2.1.2),
    # the thumbprint is computed over that, and the JWK turns back into the same key.
    for _ in range(2000):
        key = _key()
        numbers = key.public_key().public_numbers()
        if numbers.x < 1 << 248 or numbers.y < 1 << 248:
            break
    else:
        pytest.fail("no key with a short coordinate in 2000 tries")
    public = jwt.public_jwk(key.public_key())
    assert len(jwt.b64url_decode(public["x"])) == 32
    assert len(jwt.b64url_decode(public["y"])) == 32
    back = jwt.public_key_from_jwk(public)
    assert back.public_numbers() == numbers
    canonical = json.dumps(
        {"crv": "P-256", "kty": "EC", "x": public["x"], "y": public["y"]}, separators=(",", ":")
    ).encode()
    assert jwt.key_id(key.public_key()) == jwt.b64url(hashlib.sha256(canonical).digest())


def test_round_trip_and_header() -> None:
    key = _key()
    kid = jwt.key_id(key.public_key())
    token = jwt.encode(_claims(), key, kid)
    assert jwt.unverified_header(token) == {"alg": "ES256", "kid": kid, "typ": "JWT"}
    claims = jwt.verify(token, {kid: key.public_key()}.get, EXPECTED)
    assert claims["sub"] == "alice"
    # aud may be a list: one match is enough.
    token = jwt.encode(_claims(aud=["other", SERVICE]), key, kid)
    assert jwt.verify(token, {kid: key.public_key()}.get, EXPECTED)["aud"] == ["other", SERVICE]


def _refused(token: str, keys: dict[str, ec.EllipticCurvePublicKey], why: str) -> None:
    with pytest.raises(jwt.TokenInvalid, match=why or None):
        jwt.verify(token, keys.get, EXPECTED)


def test_forged_tokens_are_refused() -> None:
    key = _key()
    kid = jwt.key_id(key.public_key())
    keys = {kid: key.public_key()}
    good = jwt.encode(_claims(), key, kid)
    head, payload, sig = good.split(".")

    # alg none, with and without a signature.
    none_head = jwt.b64url(json.dumps({"alg": "none", "kid": kid}).encode())
    _refused(f"{none_head}.{payload}.", keys, "algorithm")
    _refused(f"{none_head}.{payload}.{sig}", keys, "algorithm")
    # HS256 with the public key (PEM and the raw point) as the HMAC secret.
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, jwt.b64url_decode(jwt.public_jwk(key.public_key())["x"])):
        forged = _raw(
            {"alg": "HS256", "kid": kid},
            _claims(),
            lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest(),
        )
        _refused(forged, keys, "algorithm")
    # RS256 signed by an attacker's RSA key under our kid.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = _raw(
        {"alg": "RS256", "kid": kid},
        _claims(),
        lambda data: rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    _refused(forged, keys, "algorithm")
    # Case games with the algorithm name.
    _refused(_raw({"alg": "es256", "kid": kid}, _claims(), _es256(key)), keys, "algorithm")
    # An attacker's key: under an unknown kid, and under OUR kid (bad signature).
    attacker = _key()
    _refused(jwt.encode(_claims(), attacker, jwt.key_id(attacker.public_key())), keys, "unknown")
    _refused(jwt.encode(_claims(), attacker, kid), keys, "bad signature")
    # The attacker's key carried in the header (jwk, CVE-2025-24976), or pointed at.
    for extra in (
        {"jwk": jwt.public_jwk(attacker.public_key())},
        {"jku": "http://169.254.169.254/keys"},
        {"x5u": "http://evil/cert"},
        {"x5c": ["MIIB"]},
    ):
        forged = _raw({"alg": "ES256", "kid": kid, **extra}, _claims(), _es256(attacker))
        _refused(forged, keys, "key material")
        # Even signed by the real key, a token carrying key material is not ours.
        forged = _raw({"alg": "ES256", "kid": kid, **extra}, _claims(), _es256(key))
        _refused(forged, keys, "key material")
    _refused(
        _raw({"alg": "ES256", "kid": kid, "crit": ["x"]}, _claims(), _es256(key)), keys, "crit"
    )
    # A tampered payload (more access) under the original signature.
    more = _claims(access=[{"type": "repository", "name": "a", "actions": ["push"]}])
    tampered = f"{head}.{jwt.b64url(json.dumps(more).encode())}.{sig}"
    _refused(tampered, keys, "bad signature")
    # A tampered header (another kid of ours) under the original signature.
    other = _key()
    other_kid = jwt.key_id(other.public_key())
    swapped = jwt.b64url(json.dumps({"alg": "ES256", "kid": other_kid, "typ": "JWT"}).encode())
    _refused(f"{swapped}.{payload}.{sig}", {**keys, other_kid: other.public_key()}, "bad signature")
    # Signatures of the wrong shape: DER instead of r||s, empty, truncated.
    der = key.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    _refused(f"{head}.{payload}.{jwt.b64url(der)}", keys, "not an ES256 signature")
    _refused(f"{head}.{payload}.", keys, "not an ES256 signature")
    _refused(f"{head}.{payload}.{sig[:-4]}", keys, "")
    # Not a JWS at all.
    for junk in ("", "a.b", "a.b.c.d", "x" * 9000, f"{head}.{payload}.{sig}=", "é.é.é"):
        _refused(junk, keys, "")


def test_claims_are_checked() -> None:
    key = _key()
    kid = jwt.key_id(key.public_key())
    keys = {kid: key.public_key()}
    now = int(time.time())
    # Another cluster's token (its own service), another issuer, no audience.
    _refused(jwt.encode(_claims(aud="cluster-2"), key, kid), keys, "another service")
    _refused(jwt.encode(_claims(aud=["cluster-2"]), key, kid), keys, "another service")
    _refused(jwt.encode({k: v for k, v in _claims().items() if k != "aud"}, key, kid), keys, "")
    _refused(jwt.encode(_claims(iss="evil"), key, kid), keys, "someone else")
    # Expired: refused past the leeway, accepted within it.
    _refused(jwt.encode(_claims(exp=now - jwt.LEEWAY - 5), key, kid), keys, "expired")
    assert jwt.verify(jwt.encode(_claims(exp=now - 10), key, kid), keys.get, EXPECTED)
    _refused(jwt.encode(_claims(exp="soon"), key, kid), keys, "exp")
    _refused(jwt.encode(_claims(exp=True), key, kid), keys, "exp")
    _refused(jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, key, kid), keys, "exp")
    # Not yet valid.
    _refused(jwt.encode(_claims(nbf=now + jwt.LEEWAY + 60), key, kid), keys, "not valid yet")
    _refused(jwt.encode(_claims(sub=5), key, kid), keys, "sub")


def test_sealed_keys() -> None:
    record, key = new_record(SECRET, time.time())
    assert record.kid == jwt.key_id(key.public_key())
    assert unseal(record, SECRET).private_numbers() == key.private_numbers()
    with pytest.raises(ValueError, match="does not open"):
        unseal(record, b"t" * 32)
    # A sealed key moved under another record's id does not open (the id is the AAD).
    other, _ = new_record(SECRET, time.time())
    moved = SigningKeyRecord(other.kid, record.created_at, other.jwk, record.sealed)
    with pytest.raises(ValueError, match="does not open"):
        unseal(moved, SECRET)
    # Sealed for the right id but holding another key: refused.
    liar = SigningKeyRecord(other.kid, 0, other.jwk, seal(key, other.kid, SECRET))
    with pytest.raises(ValueError, match="not the key"):
        unseal(liar, SECRET)
    # The record holds no private material in the clear.
    assert b"PRIVATE" not in record.encode()
    assert SigningKeyRecord.decode(record.encode()) == record


def _service(meta: MemoryMetaStore, secret: bytes = SECRET) -> TokenService:
    return TokenService(SigningKeys(meta, secret), SERVICE, ttl=300)


def test_issue_verify_rotate_across_replicas() -> None:
    async def main() -> None:
        meta = MemoryMetaStore()
        a, b = _service(meta), _service(meta)
        user = Principal("alice", "user")
        granted = [Access("repository", "acme/app", frozenset({"pull"}))]
        first = await a.issue(user, granted)
        assert first.expires_in == 300
        kid1 = jwt.unverified_header(first.token)["kid"]
        # Replica b never loaded the keys: an unknown kid makes it read them.
        principal = await b.verify_access(first.token)
        assert principal.name == "alice"
        assert principal.kind == "user"
        assert principal.limit == tuple(granted)
        # Rotation on replica a: a new kid signs; the old token still verifies everywhere.
        kid2 = await a.keys.rotate()
        assert kid2 != kid1
        second = await a.issue(user, granted)
        assert jwt.unverified_header(second.token)["kid"] == kid2
        b._verified.clear()
        assert (await b.verify_access(first.token)).name == "alice"
        # b re-read its keys for kid1 a moment ago: the new kid waits for the next allowed
        # re-read (rate-limited), and is not refused.
        assert (await b.verify_access(second.token)).name == "alice"
        # ... and replica b signs with the new key at once (it checks the newest id).
        assert jwt.unverified_header((await b.issue(user, granted)).token)["kid"] == kid2
        listing = await a.keys.listing()
        assert [k["kid"] for k in listing] == [kid2, kid1]
        assert [k["signing"] for k in listing] == [True, False]
        # A cluster with another secret (another cluster) neither opens nor trusts them.
        stranger = _service(MemoryMetaStore(), b"z" * 32)
        with pytest.raises(jwt.TokenInvalid, match="unknown key"):
            await stranger.verify_access(first.token)

    asyncio.run(main())


def test_automatic_rotation_makes_one_key() -> None:
    async def main() -> None:
        meta = MemoryMetaStore()
        keys = SigningKeys(meta, SECRET, rotation=3600)
        kid1, _ = await keys.signer()
        # The newest key is past the rotation period: the next signer makes one new key,
        # even when two replicas sign at the same moment.
        record = SigningKeyRecord.decode((await meta.signing_keys(16))[2][0])
        old = SigningKeyRecord(record.kid, record.created_at - 7200, record.jwk, record.sealed)
        from moorage.meta import keys as layout
        from moorage.meta.base import Put

        await meta._txn([], [Put(layout.token_key(record.kid), old.encode())])
        a, b = SigningKeys(meta, SECRET, rotation=3600), SigningKeys(meta, SECRET, rotation=3600)
        (kid_a, _), (_kid_b, _) = await asyncio.gather(a.signer(), b.signer())
        assert kid_a != kid1
        newest, _, raws = await meta.signing_keys(16)
        assert len(raws) == 2
        assert newest == kid_a
        assert (await b.signer())[0] == kid_a

    asyncio.run(main())


def test_forged_kids_do_not_hammer_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing_keys, "REREAD_INTERVAL", 0.2)

    async def main() -> None:
        meta = MemoryMetaStore()
        service = _service(meta)
        await service.issue(Principal("alice", "user"), [])
        reads = 0
        real = meta.signing_keys

        async def counting(limit: int) -> tuple[str | None, int, list[bytes]]:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.01)  # a store round trip
            return await real(limit)

        meta.signing_keys = counting  # type: ignore[method-assign]
        attacker = _key()

        async def forged(i: int) -> None:
            tok = jwt.encode(_claims(jti=str(i)), attacker, f"forged-{i}")
            with pytest.raises(jwt.TokenInvalid, match="unknown key"):
                await service.verify_access(tok)

        # 300 forged key ids at once: one re-read serves them all (then a second one for
        # those that arrived during it, at most).
        await asyncio.gather(*(forged(i) for i in range(300)))
        assert 1 <= reads <= 2

    asyncio.run(main())


def test_refresh_and_access_tokens_do_not_mix() -> None:
    async def main() -> None:
        service = _service(MemoryMetaStore())
        user = UserRecord("alice", "$argon2id$hash", "admin")
        refresh = await service.issue_refresh(user)
        with pytest.raises(jwt.TokenInvalid, match="not an access token"):
            await service.verify_access(refresh)
        assert await service.verify_refresh(refresh) == ("alice", password_mark(user.password_hash))
        access = await service.issue(Principal("alice", "user"), [])
        with pytest.raises(jwt.TokenInvalid, match="not a refresh token"):
            await service.verify_refresh(access.token)
        changed = UserRecord("alice", "$argon2id$other", "admin")
        assert password_mark(changed.password_hash) != password_mark(user.password_hash)

    asyncio.run(main())


def test_verified_tokens_are_cached_until_they_expire() -> None:
    async def main() -> None:
        service = _service(MemoryMetaStore())
        issued = await service.issue(Principal("bob", "robot", token_id="t1"), [])
        first = await service.verify_access(issued.token)
        assert first.kind == "robot"
        assert first.token_id == "t1"
        assert await service.verify_access(issued.token) is first  # from the cache
        # An expired entry is not served from the cache.
        key = next(iter(service._verified))
        service._verified[key] = (time.time() - 1, Principal("mallory", "user"))
        assert (await service.verify_access(issued.token)).name == "bob"

    asyncio.run(main())


class _Inner(Authenticator):
    async def authenticate(
        self, authorization: str | None, client: str | None = None
    ) -> Principal | None:
        return Principal("carol", "user", admin=True) if authorization == "Basic good" else None


def test_authenticator_and_challenge() -> None:
    async def main() -> None:
        service = _service(MemoryMetaStore())
        realm = Realm(
            "https", 5000, frozenset({"reg.example", "127.0.0.1"}), "https://10.0.0.1:5000"
        )
        auth = BearerAuthenticator(_Inner(), service, realm)
        issued = await service.issue(Principal("alice", "user"), [])
        # /v2 takes Bearer and Basic; the admin interface (authenticate) takes Basic only.
        p = await request_principal(auth, f"Bearer {issued.token}", None)
        assert p is not None
        assert p.name == "alice"
        assert p.limit == ()
        assert await auth.authenticate(f"Bearer {issued.token}") is None
        p = await request_principal(auth, "Basic good", None)
        assert p == Principal("carol", "user", admin=True)
        assert await request_principal(auth, "Basic bad", None) is None
        assert (await request_principal(auth, None, None)).anonymous  # type: ignore[union-attr]
        assert await request_principal(auth, "Bearer garbage", None) is None
        assert await request_principal(auth, "Bearer ", None) is None
        assert bearer_token("bearer  abc ") == "abc"

        # The realm follows the Host the client used only when it names this replica.
        assert realm.base("reg.example:5000") == "https://reg.example:5000"
        assert realm.base("REG.example:5000") == "https://REG.example:5000"
        forged_hosts = ["evil.example:5000", "reg.example:5001", "reg.example", None, ""]
        forged_hosts += ["reg.example:5000/x", "reg.example:5000@evil", "a b", "[::1]:5000"]
        for forged in forged_hosts:
            assert realm.base(forged) == "https://10.0.0.1:5000", forged
        required = [
            Access("repository", "acme/app", frozenset({"pull", "push"})),
            Access("repository", "acme/base", frozenset({"pull"})),
        ]
        value = challenge(auth, realm.base("reg.example:5000"), required, "insufficient_scope")
        assert value == (
            'Bearer realm="https://reg.example:5000/auth/token",service="cluster-1",'
            'scope="repository:acme/app:pull,push repository:acme/base:pull",'
            'error="insufficient_scope"'
        )
        assert (
            challenge(auth, None, [])
            == 'Bearer realm="https://10.0.0.1:5000/auth/token",service="cluster-1"'
        )
        assert challenge(_Inner(), None, required) == 'Basic realm="moorage"'

    asyncio.run(main())


def test_b64url() -> None:
    assert jwt.b64url(b"\xff\xfe") == "__4"
    assert jwt.b64url_decode("__4") == b"\xff\xfe"
    for bad in ("__4=", "é", "a"):
        with pytest.raises(jwt.TokenInvalid):
            jwt.b64url_decode(bad)
    assert base64.urlsafe_b64encode(b"x")  # the module's encoding is the URL-safe alphabet


def test_without_quorum_the_old_key_signs_on_and_unknown_kids_are_refused() -> None:
    from moorage.errors import StoreUnavailable

    class NoQuorum(MemoryMetaStore):
        down = False

        async def _txn(self, guards: Any, ops: Any) -> bool:
            if self.down:
                raise StoreUnavailable("no quorum")
            return await super()._txn(guards, ops)

    async def main() -> None:
        meta = NoQuorum()
        keys = SigningKeys(meta, SECRET, rotation=3600)
        kid, _ = await keys.signer()
        meta.down = True
        # The newest key is past its rotation period, and a new one cannot be stored.
        record = keys._keys[kid].record
        keys._keys[kid] = signing_keys._Key(
            SigningKeyRecord(kid, record.created_at - 7200, record.jwk, record.sealed),
            keys._keys[kid].public,
        )
        keys._loaded_at = time.monotonic()
        meta.signing_keys = _stale(keys, kid)  # type: ignore[method-assign]
        assert (await keys.signer())[0] == kid
        # A key set that cannot be re-read: an unknown kid is refused, not an error.

        async def unreachable(limit: int) -> tuple[str | None, int, list[bytes]]:
            raise StoreUnavailable("unreachable")

        meta.signing_keys = unreachable  # type: ignore[method-assign]
        assert await keys.find("unknown-kid") is None

    asyncio.run(main())


def _stale(keys: SigningKeys, kid: str) -> Any:
    """A store read that answers the (old) key as it is stored, in the past."""

    async def read(limit: int) -> tuple[str | None, int, list[bytes]]:
        return kid, 1, [keys._keys[kid].record.encode()]

    return read


_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _signed_text(header: str, payload: str, key: ec.EllipticCurvePrivateKey) -> str:
    """A token of exactly these header and payload texts, validly signed (low s)."""
    h, p = jwt.b64url(header.encode()), jwt.b64url(payload.encode())
    r, s = _split(_es256(key)(f"{h}.{p}".encode()))
    s = min(s, _ORDER - s)
    return f"{h}.{p}.{jwt.b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _split(sig: bytes) -> tuple[int, int]:
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def test_a_signature_has_one_form() -> None:
    """ECDSA's (r, n - s) verifies as well as (r, s): a probe altered issued tokens that way
    without any key and they were accepted (a second text, a second cache slot). Only the
    low-s form is accepted, and it is the one `encode` writes."""
    key = _key()
    kid = jwt.key_id(key.public_key())
    keys = {kid: key.public_key()}
    for _ in range(16):  # about half of the raw signatures come out high: all are written low
        token = jwt.encode(_claims(), key, kid)
        head, payload, sig = token.split(".")
        r, s = _split(jwt.b64url_decode(sig))
        assert s <= _ORDER // 2
        assert jwt.verify(token, keys.get, EXPECTED)
        high = jwt.b64url(r.to_bytes(32, "big") + (_ORDER - s).to_bytes(32, "big"))
        _refused(f"{head}.{payload}.{high}", keys, "low s")


def test_claims_are_strict_json_and_finite() -> None:
    """Signed with the real key (defence in depth): a 400-digit exp was a 500 with a
    traceback; exp NaN or Infinity never expired; duplicate members (the last wins) and a
    BOM were accepted; a token issued in the future or valid for 30 years was accepted."""
    key = _key()
    kid = jwt.key_id(key.public_key())
    keys = {kid: key.public_key()}
    header = json.dumps({"alg": "ES256", "kid": kid, "typ": "JWT"})
    now = int(time.time())
    # the members but exp, to add to
    base = json.dumps({k: v for k, v in _claims().items() if k != "exp"})[1:-1]
    for extra, why in (
        ('"exp": ' + "9" * 400, "out of range"),
        ('"exp": NaN', "not JSON"),
        ('"exp": Infinity', "not JSON"),
        ('"exp": 1e999', "finite"),
        ('"exp": ' + str(now + 300) + ', "sub": "bob"', "not JSON"),  # a second sub
    ):
        _refused(_signed_text(header, "{" + base + ", " + extra + "}", key), keys, why)
    _refused(_signed_text(header, "\ufeff" + json.dumps(_claims()), key), keys, "not JSON")
    dup_alg = header[:-1] + ', "alg": "none"}'
    with pytest.raises(jwt.TokenInvalid, match="not JSON"):
        jwt.verify(_signed_text(dup_alg, json.dumps(_claims()), key), keys.get, EXPECTED)
    _refused(jwt.encode(_claims(iat=now + 3600), key, kid), keys, "future")
    capped = jwt.Expected("moorage", SERVICE, max_lifetime=3600)
    long_lived = jwt.encode(_claims(exp=now + 30 * 365 * 86400), key, kid)
    assert jwt.verify(long_lived, keys.get, EXPECTED)  # no cap asked for
    with pytest.raises(jwt.TokenInvalid, match="longer"):
        jwt.verify(long_lived, keys.get, capped)
    no_iat = jwt.encode({k: v for k, v in _claims().items() if k != "iat"}, key, kid)
    with pytest.raises(jwt.TokenInvalid, match="iat"):
        jwt.verify(no_iat, keys.get, capped)


def test_access_tokens_say_who_they_are_consistently() -> None:
    """Signed with the cluster's key (defence in depth): a robot or personal-token principal
    without its token id skipped the revocation check; a user with one, or an access token
    valid for more than MAX_TTL, is none this registry issues."""

    async def main() -> None:
        meta = MemoryMetaStore()
        service = _service(meta)
        kid, key = await service.keys.signer()
        now = int(time.time())

        async def refused(why: str, **over: Any) -> None:
            claims = _claims(iss="moorage", **over)
            with pytest.raises(jwt.TokenInvalid, match=why):
                await service.verify_access(jwt.encode(claims, key, kid))

        for tid in (None, "", 5):
            over = {"kind": "robot", "sub": "robot+ci"} | ({} if tid is None else {"tid": tid})
            await refused("token id", **over)
        await refused("token id", kind="token", sub="alice")
        await refused("has none", kind="user", tid="0123456789abcdef")
        await refused("longer", kind="user", exp=now + 7200)
        good = await service.verify_access(
            jwt.encode(_claims(kind="robot", sub="robot+ci", tid="0123456789abcdef"), key, kid)
        )
        assert good.token_id == "0123456789abcdef"

    asyncio.run(main())
