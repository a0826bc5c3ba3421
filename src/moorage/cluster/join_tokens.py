"""Join tokens (DESIGN.md §7): a short-lived, single-use secret that lets one new replica
join without the admin password, as `kubeadm join --token` does.

* A token is `mjt_` + 48 random hex digits (192 bits), shown once. etcd keeps only its
  SHA-256 (a hash suffices: the token has full entropy), under `meta.keys.JOIN_TOKENS`, on a
  lease of its ttl (at most MAX_TTL): etcd deletes it when it expires, and every use also
  compares its `expires_at` (a lease can outlive its ttl across a leader change).
* The join call uses it up: it creates the token's claim (`JOIN_CLAIMS`, created only if
  absent, so of two concurrent joins exactly one wins) holding the hash of a secret the
  joiner chose, then deletes the token. The joiner's later calls (promote, status, end) and
  its retries present the token and that secret; nobody else can. The claim stays until its
  lease, which outlives the token's, ends (a reuse is told which join used the token).
* At most MAX_TOKENS unused tokens exist at a time: listing them is one bounded read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from moorage.errors import Denied, JoinTokenRefused, MoorageError
from moorage.meta.cluster_store import ClusterStore
from moorage.meta.join_records import JoinClaimRecord, JoinTokenRecord

PREFIX = "mjt_"
TOKEN_FORM = re.compile(r"mjt_[0-9a-f]{48}")
SECRET_FORM = re.compile(r"[0-9a-f]{64}")
DEFAULT_TTL = 3600
MAX_TTL = 24 * 3600
MAX_TOKENS = 100
#: How long a claim outlives its token: a join's promote and end come within minutes.
CLAIM_GRACE = 3600
ID_LENGTH = 12
WHAT_TO_DO = (
    "create a new one on the cluster (moorage join-token create --existing URL, with the "
    "admin credentials) and run the join again with it"
)


class TooManyTokens(MoorageError):
    """MAX_TOKENS unused tokens exist already."""


def parse_ttl(text: str) -> int:
    """`90s`, `30m`, `1h`, `24h` or plain seconds; ValueError past MAX_TTL or under 1 s."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smh]?)\s*", str(text))
    if not match:
        raise ValueError(f"ttl must look like 90s, 30m or 1h, not {str(text)[:40]!r}")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 1 <= seconds <= MAX_TTL:
        raise ValueError(
            f"ttl must be between 1 s and {MAX_TTL // 3600} h (a join token is short-lived; "
            "create a new one when you need it), not "
            f"{seconds} s"
        )
    return seconds


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_hex(24)


def _view(digest: str, record: JoinTokenRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "created_by": record.created_by,
    }


async def create(store: ClusterStore, ttl: int, by: str) -> dict[str, Any]:
    """A new token (the only time it is seen) and its record's public fields."""
    if len(await store.join_tokens(MAX_TOKENS)) >= MAX_TOKENS:
        raise TooManyTokens(
            f"{MAX_TOKENS} unused join tokens exist already; revoke some (moorage join-token "
            "list / revoke) or let them expire"
        )
    token = new_token()
    digest = token_hash(token)
    now = time.time()
    record = JoinTokenRecord(digest[:ID_LENGTH], now, now + ttl, by)
    if not await store.create_join_token(digest, record, ttl):
        raise MoorageError("a join token of that hash exists already (retry)")
    return {"token": token, "ttl": ttl, **_view(digest, record)}


async def list_tokens(store: ClusterStore) -> list[dict[str, Any]]:
    now = time.time()
    return [_view(d, r) for d, r in await store.join_tokens(MAX_TOKENS) if r.expires_at > now]


async def revoke(store: ClusterStore, token_or_id: str) -> bool:
    """Revoke a token given itself or its id; False when there is no such (unused) token."""
    value = token_or_id.strip()
    if TOKEN_FORM.fullmatch(value):
        return await store.revoke_join_token(token_hash(value))
    if len(value) == ID_LENGTH and re.fullmatch("[0-9a-f]+", value):
        return await store.revoke_join_token(value)
    raise ValueError(f"expected a join token (mjt_...) or its {ID_LENGTH}-digit id")


@dataclass(frozen=True)
class JoinGrant:
    """What a joiner's token and secret allow: `claim` is set once its join used the token."""

    digest: str
    secret_hash: str
    claim: JoinClaimRecord | None

    def require_claim(self) -> JoinClaimRecord:
        if self.claim is None:
            raise Denied("this call needs a join token that was used by this join first")
        return self.claim


async def check(store: ClusterStore, token: str, secret: str) -> JoinGrant:
    """The grant of a joiner's token and secret, or JoinTokenRefused saying why not."""
    if not TOKEN_FORM.fullmatch(token) or not SECRET_FORM.fullmatch(secret):
        raise JoinTokenRefused(f"that is not a join token; {WHAT_TO_DO}")
    digest, secret_hash = token_hash(token), hashlib.sha256(secret.encode()).hexdigest()
    claim = await store.get_join_claim(digest)
    if claim is not None:
        if hmac.compare_digest(claim.secret_hash, secret_hash):
            return JoinGrant(digest, secret_hash, claim)
        raise JoinTokenRefused(
            f"this join token was used already (by the join of replica {claim.replica_id}); "
            + WHAT_TO_DO
        )
    record = await store.get_join_token(digest)
    if record is None:
        raise JoinTokenRefused(
            f"this join token is unknown, expired, revoked or used already; {WHAT_TO_DO}"
        )
    if record.expires_at <= time.time():
        raise JoinTokenRefused(f"this join token has expired; {WHAT_TO_DO}")
    return JoinGrant(digest, secret_hash, None)


async def claim(
    store: ClusterStore, grant: JoinGrant, replica_id: str, peer_url: str
) -> JoinClaimRecord:
    """Use the token up for the join of `replica_id` (a retry of the same join passes)."""
    if grant.claim is None:
        record = await store.get_join_token(grant.digest)
        if record is not None and record.expires_at > time.time():
            ttl = int(record.expires_at - time.time()) + CLAIM_GRACE
            mine = JoinClaimRecord(grant.secret_hash, replica_id, peer_url, time.time())
            if await store.claim_join_token(grant.digest, mine, ttl):
                return mine
        # Gone since `check`, or claimed under us: a concurrent join may have used it.
        found = await store.get_join_claim(grant.digest)
        if found is None:
            if record is None or record.expires_at <= time.time():
                raise JoinTokenRefused(f"this join token has expired or was revoked; {WHAT_TO_DO}")
            raise JoinTokenRefused(f"this join token was used already; {WHAT_TO_DO}")
        if not hmac.compare_digest(found.secret_hash, grant.secret_hash):
            raise JoinTokenRefused(
                f"this join token was used already (by {found.replica_id}); {WHAT_TO_DO}"
            )
        grant = JoinGrant(grant.digest, grant.secret_hash, found)
    held = grant.require_claim()
    if (held.replica_id, held.peer_url) != (replica_id, peer_url):
        raise Denied(
            f"this join token was used for replica {held.replica_id} at {held.peer_url}, "
            "not for this one"
        )
    return held
