"""Two joins that present the same join token at once (cluster/join_tokens.py): both pass
`check` while the token is unused, one claims it; the other must be told the token was used
(and by whom), not that it expired. CI saw the second message once under load."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from moorage.cluster import join_tokens
from moorage.errors import JoinTokenRefused
from moorage.meta.join_records import JoinClaimRecord, JoinTokenRecord


class Store:
    """The four calls join_tokens makes, over two dicts, with etcd's create-if-absent."""

    def __init__(self) -> None:
        self.tokens: dict[str, JoinTokenRecord] = {}
        self.claims: dict[str, JoinClaimRecord] = {}

    async def get_join_token(self, digest: str) -> JoinTokenRecord | None:
        return self.tokens.get(digest)

    async def get_join_claim(self, digest: str) -> JoinClaimRecord | None:
        return self.claims.get(digest)

    async def claim_join_token(self, digest: str, claim: JoinClaimRecord, ttl: int) -> bool:
        if digest in self.claims:
            return False
        self.claims[digest] = claim
        self.tokens.pop(digest, None)
        return True


def grant(store: Store, token: str, secret: str) -> join_tokens.JoinGrant:
    return asyncio.run(join_tokens.check(cast(Any, store), token, secret))


def claim(store: Store, g: join_tokens.JoinGrant, replica: str) -> JoinClaimRecord:
    return asyncio.run(join_tokens.claim(cast(Any, store), g, replica, f"https://{replica}"))


@pytest.fixture
def made() -> tuple[Store, str]:
    store = Store()
    token = join_tokens.new_token()
    now = time.time()
    store.tokens[join_tokens.token_hash(token)] = JoinTokenRecord("id", now, now + 600, "admin")
    return store, token


def test_the_loser_whose_token_was_deleted_meanwhile_is_told_it_was_used(
    made: tuple[Store, str],
) -> None:
    store, token = made
    first, second = grant(store, token, "a" * 64), grant(store, token, "b" * 64)
    assert claim(store, first, "r1").replica_id == "r1"
    with pytest.raises(JoinTokenRefused, match=r"used already \(by r1\).*join-token create"):
        claim(store, second, "r2")


def test_the_loser_of_the_claim_itself_is_told_it_was_used(made: tuple[Store, str]) -> None:
    store, token = made
    second = grant(store, token, "b" * 64)
    digest = join_tokens.token_hash(token)
    # r1's claim lands between r2's read of the token and r2's own claim.
    real = store.get_join_token

    async def read_then_lose(d: str) -> JoinTokenRecord | None:
        record = await real(d)
        store.claims[digest] = JoinClaimRecord("x" * 64, "r1", "https://r1", time.time())
        return record

    store.get_join_token = read_then_lose  # type: ignore[method-assign,assignment]
    with pytest.raises(JoinTokenRefused, match=r"used already \(by r1\)"):
        claim(store, second, "r2")


def test_a_retry_of_the_winning_join_passes(made: tuple[Store, str]) -> None:
    store, token = made
    first = grant(store, token, "a" * 64)
    won = claim(store, first, "r1")
    assert claim(store, first, "r1") == won  # its token is gone; its own claim is found


def test_a_revoked_token_is_still_called_expired_or_revoked(made: tuple[Store, str]) -> None:
    store, token = made
    g = grant(store, token, "a" * 64)
    store.tokens.clear()
    with pytest.raises(JoinTokenRefused, match="expired or was revoked"):
        claim(store, g, "r1")
