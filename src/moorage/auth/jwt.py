"""ES256 JSON Web Tokens, written out (RFC 7515/7519/7518 §3.4, RFC 7638), for the Docker
token flow (issue #9; research/security.md §1.4, §3 rows 1, 2, 19).

Only what the registry needs, and nothing a token can steer:

* `alg` is pinned: a header whose `alg` is not exactly "ES256" is refused (`none`, HS256
  signed with the public key, RS256...), whatever the key;
* the key comes ONLY from our own key set, by `kid`; `jwk`, `jku`, `x5c`, `x5u` in a header
  are never read (a header that carries them is refused outright: we never send them);
* the signature is the raw r||s of RFC 7518 §3.4 (64 bytes) with s in the lower half of
  the group order (ECDSA's (r, n-s) is just as valid: refused, so one token has one
  text), checked before any claim is looked at; then `aud` (string or list) must hold our
  service, `iss` must be ours, `exp`/`nbf`/`iat` are finite numbers, `exp`/`nbf` hold
  within a small leeway, `iat` is not in the future and `exp - iat` is at most the
  caller's longest lifetime;
* the header and payload are strict JSON: UTF-8 without a BOM, no duplicate member, no
  NaN or Infinity.

The key id is the RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of the public
key, with fixed-length coordinates.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

ALG = "ES256"
LEEWAY = 60  # seconds of clock skew tolerated on exp and nbf, as distribution allows
MAX_TOKEN = 8192  # longer tokens are refused unread
_COORD = 32  # bytes of a P-256 coordinate
#: The order of P-256's group: a signature's s must be at most half of it ("low s").
_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: Header parameters that carry key material or say where to fetch it: never honoured.
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_KEY_HEADERS = frozenset({"jwk", "jku", "x5c", "x5u", "x5t", "x5t#S256"})


class TokenInvalid(ValueError):
    """The token is not one of ours, or no longer valid (the message says why, for logs)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """The bytes of canonical unpadded base64url: any other character (the decoder would
    skip it) or set unused low bits (the same bytes under another spelling) is refused, so
    one token has exactly one text."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenInvalid("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(data) != text:
        raise TokenInvalid("not canonical base64url")
    return data


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public key as a JWK with fixed-length coordinates (RFC 7518 §6.2.1.2)."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("only P-256 keys are used")
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(_COORD, "big")),
        "y": b64url(numbers.y.to_bytes(_COORD, "big")),
    }


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    if jwk.get("kty") == "EC":
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    elif jwk.get("kty") == "RSA":
        members = {k: jwk[k] for k in ("e", "kty", "n")}
    elif jwk.get("kty") == "OKP":
        members = {k: jwk[k] for k in ("crv", "kty", "x")}
    else:
        raise ValueError(f"unsupported key type {jwk.get('kty')!r}")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    return jwk_thumbprint(public_jwk(key))


def public_key_from_jwk(jwk: Mapping[str, str]) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("not a P-256 JWK")
    x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
    if len(x) != _COORD or len(y) != _COORD:
        raise ValueError("a P-256 coordinate is not 32 bytes")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    )
    return numbers.public_key()  # raises ValueError when the point is not on the curve


def _json_part(obj: Mapping[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode())


def encode(claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    """A compact ES256 JWS of `claims`, with `kid` in its header."""
    header = {"alg": ALG, "kid": kid, "typ": "JWT"}
    signing_input = f"{_json_part(header)}.{_json_part(claims)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    if s > _ORDER // 2:
        s = _ORDER - s  # the same signature's low-s form: the only one `verify` accepts
    signature = r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")
    return f"{signing_input.decode()}.{b64url(signature)}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("a member appears twice")
    return doc


def _object(part: str, what: str) -> dict[str, Any]:
    try:
        text = b64url_decode(part).decode("utf-8")  # strict: no BOM (json refuses one in text)
        doc = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise TokenInvalid(f"the {what} is not JSON") from exc
    if not isinstance(doc, dict):
        raise TokenInvalid(f"the {what} is not a JSON object")
    return doc


def unverified_header(token: str) -> dict[str, Any]:
    """The header, checked for what we accept (alg pinned, no key material), NOT verified."""
    if len(token) > MAX_TOKEN or token.count(".") != 2:
        raise TokenInvalid("not a compact JWS")
    header = _object(token.split(".", 1)[0], "header")
    if header.get("alg") != ALG:
        raise TokenInvalid(f"algorithm {str(header.get('alg'))[:20]!r} is not accepted")
    if _KEY_HEADERS & header.keys():
        raise TokenInvalid("key material in the header is never accepted")
    if "crit" in header:
        raise TokenInvalid("critical header extensions are not supported")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 128:
        raise TokenInvalid("no key id")
    return header


@dataclass(frozen=True, slots=True)
class Expected:
    """What a valid token's claims must say."""

    issuer: str
    audience: str
    leeway: int = LEEWAY
    #: the longest lifetime (exp - iat) a token may claim, None: any
    max_lifetime: float | None = None


def verify(
    token: str,
    find_key: Callable[[str], ec.EllipticCurvePublicKey | None],
    expected: Expected,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of `token` if it is valid; TokenInvalid otherwise.

    `find_key(kid)` gives the trusted public key for a key id (None: unknown)."""
    header = unverified_header(token)
    key = find_key(header["kid"])
    if key is None:
        raise TokenInvalid("unknown key id")
    head, payload, sig = token.split(".")
    signature = b64url_decode(sig)
    if len(signature) != 2 * _COORD:
        raise TokenInvalid("the signature is not an ES256 signature")
    if int.from_bytes(signature[_COORD:], "big") > _ORDER // 2:
        raise TokenInvalid("the signature is not in its canonical (low s) form")
    der = encode_dss_signature(
        int.from_bytes(signature[:_COORD], "big"), int.from_bytes(signature[_COORD:], "big")
    )
    try:
        key.verify(der, f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise TokenInvalid("bad signature") from exc
    claims = _object(payload, "payload")
    check_claims(claims, expected, time.time() if now is None else now)
    return claims


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenInvalid(f"claim {name!r} missing or not a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise TokenInvalid(f"claim {name!r} is out of range") from exc
    if not math.isfinite(number):
        raise TokenInvalid(f"claim {name!r} is not a finite number")
    return number


def check_claims(claims: Mapping[str, Any], expected: Expected, now: float) -> None:
    if claims.get("iss") != expected.issuer:
        raise TokenInvalid("issued by someone else")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if expected.audience not in audiences:
        raise TokenInvalid("issued for another service")
    exp = _number(claims, "exp")
    if now > exp + expected.leeway:
        raise TokenInvalid("expired")
    if "nbf" in claims and now < _number(claims, "nbf") - expected.leeway:
        raise TokenInvalid("not valid yet")
    if "iat" in claims and _number(claims, "iat") > now + expected.leeway:
        raise TokenInvalid("issued in the future")
    if expected.max_lifetime is not None:
        if "iat" not in claims:
            raise TokenInvalid("claim 'iat' missing")
        if exp - _number(claims, "iat") > expected.max_lifetime:
            raise TokenInvalid("valid for longer than any token this registry issues")
    if not isinstance(claims.get("sub", ""), str):
        raise TokenInvalid("claim 'sub' is not a string")
