"""Bearer tokens on `/v2/`: issuing and verifying the registry's JWTs, the authenticator that
accepts them beside Basic credentials, and the `WWW-Authenticate` challenge (issue #9 item 2;
research/security.md §1).

* `TokenService` issues access tokens (ES256, `kid` = RFC 7638 thumbprint, claims `iss`,
  `sub`, `aud` = the service = the cluster id, `exp`, `nbf`, `iat`, `jti`, `access`) and
  refresh tokens (also JWTs, `typ` "refresh", never accepted on `/v2/`), and verifies both.
  A verified access token is remembered (keyed by the SHA-256 of its bytes, until it
  expires), so a request with a Bearer token costs a dict lookup, like a cached Basic login.
* A refresh token is bound to its account and to the account's password: it stops working
  when the account is deleted or disabled, or its password changes (checked at each use).
* `BearerAuthenticator` wraps the Basic one: `principal()` accepts `Bearer <jwt>` and gives
  a Principal whose `limit` is the token's access claims; anything else goes to the wrapped
  authenticator. Its `authenticate()` (the base interface, used by the admin API) does NOT
  accept Bearer tokens: `/api/v0/` stays Basic-only (a token never carries admin-API power).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from moorage.auth import access, jwt
from moorage.auth.access import ANONYMOUS, Access, Principal
from moorage.auth.base import Authenticator
from moorage.auth.signing_keys import SigningKeys
from moorage.meta.records import UserRecord

log = logging.getLogger("moorage.auth")

ISSUER = "moorage"
DEFAULT_TTL = 300
MIN_TTL = 60  # clients raise anything lower to 60 s (distribution, containers/image)
MAX_TTL = 3600
REFRESH_TTL = 30 * 86400
MAX_ACCESS = 64  # access entries in one token
_CACHE_MAX = 10000
_KINDS = frozenset({"user", "robot", "token", "anonymous"})
_REFRESH = "refresh"


def token_ttl() -> int:
    raw = os.environ.get("MOORAGE_TOKEN_TTL", "")
    try:
        value = int(raw) if raw else DEFAULT_TTL
    except ValueError:
        value = DEFAULT_TTL
    return min(MAX_TTL, max(MIN_TTL, value))


def as_principal(who: Principal | None) -> Principal | None:
    """What an authenticator answered (kept for the callers that still wrap it)."""
    return who


def user_active(user: UserRecord | None) -> bool:
    return user is not None and not getattr(user, "disabled", False)


def user_principal(user: UserRecord) -> Principal:
    admin = getattr(user, "admin", None)
    return Principal(
        user.name,
        "user",
        admin=bool(admin) or user.role == "admin",
        mark=access.account_mark(user),
    )


def access_claims(granted: Iterable[Access]) -> list[dict[str, Any]]:
    return [
        {"type": a.type, "name": a.name, "actions": sorted(a.actions)} for a in granted if a.actions
    ]


def _limit(claims: dict[str, Any]) -> tuple[Access, ...]:
    raw = claims.get("access", [])
    if not isinstance(raw, list) or len(raw) > MAX_ACCESS:
        raise jwt.TokenInvalid("malformed access claim")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise jwt.TokenInvalid("malformed access claim")
        rtype, name, actions = item.get("type"), item.get("name"), item.get("actions")
        if (
            not isinstance(rtype, str)
            or not isinstance(name, str)
            or not isinstance(actions, list)
            or not all(isinstance(a, str) for a in actions)
        ):
            raise jwt.TokenInvalid("malformed access claim")
        out.append(Access(rtype, name, frozenset(actions)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    expires_in: int
    issued_at: float


class TokenService:
    """Issues and verifies this cluster's tokens."""

    def __init__(self, keys: SigningKeys, service: str, ttl: int | None = None) -> None:
        self.keys = keys
        self.service = service
        self.ttl = token_ttl() if ttl is None else ttl
        # No token of ours lives longer than a refresh token (an access token: MAX_TTL).
        self.expected = jwt.Expected(ISSUER, service, max_lifetime=REFRESH_TTL)
        self._verified: dict[bytes, tuple[float, Principal]] = {}

    async def _sign(self, claims: dict[str, Any]) -> str:
        kid, key = await self.keys.signer()
        return jwt.encode(claims, key, kid)

    def _claims(self, principal: Principal, now: int, ttl: int) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": principal.name,
            "aud": self.service,
            "exp": now + ttl,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_urlsafe(18),
            "kind": principal.kind,
        }
        if principal.admin:
            claims["adm"] = True
        if principal.token_id:
            claims["tid"] = principal.token_id
        if principal.mark:
            claims["pwd"] = principal.mark
        return claims

    async def issue(self, principal: Principal, granted: Sequence[Access]) -> Issued:
        now = int(time.time())
        claims = self._claims(principal, now, self.ttl)
        claims["access"] = access_claims(granted)
        return Issued(await self._sign(claims), self.ttl, float(now))

    async def issue_refresh(self, user: UserRecord) -> str:
        now = int(time.time())
        claims = self._claims(user_principal(user), now, REFRESH_TTL)
        claims["typ"] = _REFRESH  # `pwd`, the account's password mark, is the principal's
        return await self._sign(claims)

    async def _verify(self, token: str) -> dict[str, Any]:
        header = jwt.unverified_header(token)
        key = await self.keys.find(header["kid"])  # a re-read is rate-limited there
        return jwt.verify(token, lambda kid: key if kid == header["kid"] else None, self.expected)

    async def verify_access(self, token: str) -> Principal:
        """The principal an access token stands for; TokenInvalid when it is not valid."""
        cache_key = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(cache_key)
        now = time.time()
        if hit is not None and now <= hit[0]:
            return hit[1]
        claims = await self._verify(token)
        if claims.get("typ") == _REFRESH or "access" not in claims:
            raise jwt.TokenInvalid("not an access token")
        kind = claims.get("kind", "token")
        sub = claims.get("sub", "")
        if kind not in _KINDS or (kind == "anonymous") != (sub == ""):
            raise jwt.TokenInvalid("malformed subject")
        tid = claims.get("tid")
        if kind in ("robot", "token") and (not isinstance(tid, str) or not tid):
            raise jwt.TokenInvalid("an access token's principal without its token id")
        if kind not in ("robot", "token") and "tid" in claims:
            raise jwt.TokenInvalid("a token id on a principal that has none")
        if float(claims["exp"]) - float(claims["iat"]) > MAX_TTL:  # both checked: numbers
            raise jwt.TokenInvalid("valid for longer than any access token this registry issues")
        mark = claims.get("pwd") if kind == "user" else None
        principal = Principal(
            name=sub,
            kind=kind,
            admin=claims.get("adm") is True,
            limit=_limit(claims),
            token_id=tid if isinstance(tid, str) else None,
            mark=mark if isinstance(mark, str) else None,
        )
        if len(self._verified) >= _CACHE_MAX:
            self._verified = {k: v for k, v in self._verified.items() if v[0] >= now}
            if len(self._verified) >= _CACHE_MAX:
                self._verified.clear()
        # Valid until exp (+ the leeway the check allows), never past it.
        self._verified[cache_key] = (float(claims["exp"]) + self.expected.leeway, principal)
        return principal

    async def verify_refresh(self, token: str) -> tuple[str, str]:
        """(account name, password mark) of a refresh token; TokenInvalid otherwise. The
        caller checks the account still exists, is enabled and has that password."""
        claims = await self._verify(token)
        sub, mark = claims.get("sub"), claims.get("pwd")
        if claims.get("typ") != _REFRESH or not isinstance(sub, str) or not sub:
            raise jwt.TokenInvalid("not a refresh token")
        if not isinstance(mark, str):
            raise jwt.TokenInvalid("not a refresh token")
        return sub, mark


def bearer_token(authorization: str | None) -> str | None:
    """The token of a `Bearer` Authorization header, or None when it is not one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or ""


class BearerAuthenticator(Authenticator):
    """Bearer JWTs (`principal`) beside the wrapped authenticator's Basic credentials."""

    challenge = 'Basic realm="moorage"'  # the admin API's challenge: it is Basic-only

    def __init__(
        self,
        inner: Authenticator,
        tokens: TokenService,
        realm: Realm,
        token_live: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.inner = inner
        self.tokens = tokens
        self.realm = realm
        # Whether the access token a JWT was issued to still exists and has not expired:
        # asked on every request with such a JWT, so a revoked robot stops at once.
        self.token_live = token_live

    @property
    def throttle(self) -> object:
        """The wrapped authenticator's failed-login limits (api.join_tokens shares them)."""
        return getattr(self.inner, "throttle", None)

    async def authenticate(
        self, authorization: str | None, client: str | None = None
    ) -> Principal | None:
        if bearer_token(authorization) is not None:
            return None  # the admin API takes passwords only
        return await self.inner.authenticate(authorization, client)

    async def principal(
        self, authorization: str | None, client: str | None = None
    ) -> Principal | None:
        """Who a `/v2/` request acts for: ANONYMOUS without credentials, None for
        credentials that are not valid. Raises what `authenticate` raises."""
        if not authorization:
            return ANONYMOUS
        token = bearer_token(authorization)
        if token is None:
            return as_principal(await self.inner.authenticate(authorization, client))
        try:
            principal = await self.tokens.verify_access(token)
        except jwt.TokenInvalid as exc:
            log.info("refused a bearer token from %s: %s", client, exc)
            return None
        tid = principal.token_id
        if tid and self.token_live is not None and not await self.token_live(tid):
            log.info("refused a bearer token from %s: its access token is revoked", client)
            return None
        return principal


async def request_principal(
    auth: Authenticator, authorization: str | None, client: str | None
) -> Principal | None:
    """The `/v2/` dispatcher's entry point: Bearer or Basic with a BearerAuthenticator,
    the plain authenticator's answer otherwise (None without credentials then)."""
    if isinstance(auth, BearerAuthenticator):
        return await auth.principal(authorization, client)
    if not authorization:
        return ANONYMOUS
    return as_principal(await auth.authenticate(authorization, client))


# -- the challenge -----------------------------------------------------------------------------

_HOST = re.compile(
    r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::[0-9]{1,5})?"
)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True, slots=True)
class Realm:
    """Where clients fetch tokens: `<scheme>://<host>/auth/token`, built from the Host the
    client used when that names this replica (one of `names`, on its port), else from the
    replica's own URL: a forged Host header never sends credentials elsewhere."""

    scheme: str
    port: int
    names: frozenset[str]
    fallback: str  # the replica's URL

    def base(self, host_header: str | None) -> str:
        host = (host_header or "").strip()
        if host and len(host) <= 260 and _HOST.fullmatch(host):
            name, port = host, None
            if host.startswith("["):
                name, _, rest = host[1:].partition("]")
                port = rest[1:] if rest.startswith(":") else None
            elif host.count(":") == 1:
                name, port = host.split(":")
            default = 443 if self.scheme == "https" else 80
            port_no = int(port) if port else default
            if name.lower() in self.names and port_no == self.port:
                return f"{self.scheme}://{host}"
        return self.fallback


def realm_base(auth: Authenticator, host_header: str | None) -> str | None:
    """`<scheme>://<host>` of the token endpoint for a request that came with `host_header`
    (None when `auth` issues no tokens)."""
    return auth.realm.base(host_header) if isinstance(auth, BearerAuthenticator) else None


def challenge(
    auth: Authenticator,
    base: str | None,
    required: Sequence[Access],
    error: str | None = None,
) -> str:
    """The WWW-Authenticate value of a 401 on `/v2/`: `Bearer realm="<base>/auth/token",
    service="…",scope="…"[,error="…"]` (RFC 6750 §3 as distribution writes it: every
    required access in one space-separated scope); `auth.challenge` (Basic) when `auth`
    issues no tokens. `error`: "insufficient_scope" after a valid token that is too narrow,
    "invalid_token" after one that is not valid."""
    if not isinstance(auth, BearerAuthenticator):
        return auth.challenge
    parts = [
        f'Bearer realm="{_quote((base or auth.realm.fallback) + "/auth/token")}"',
        f'service="{_quote(auth.tokens.service)}"',
    ]
    scope = " ".join(a.scope() for a in required)
    if scope:
        parts.append(f'scope="{_quote(scope)}"')
    if error:
        parts.append(f'error="{_quote(error)}"')
    return ",".join(parts)
