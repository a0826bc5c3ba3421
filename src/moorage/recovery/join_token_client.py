"""The admin client of a join that authenticates with a join token instead of the admin
password (moorage.cluster.join_tokens): every call carries the token and the secret this
one join chose (`Moorage-Join-Secret`), so its retries and later steps are its own."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from moorage.recovery.client import AdminClient, ApiRefused

WHAT_TO_DO = (
    "create a new token on the cluster (moorage join-token create --existing URL, with the "
    "admin credentials) and run this join again with it"
)


class TokenClient(AdminClient):
    def __init__(self, urls: list[str], token: str, timeout: float = 180) -> None:
        super().__init__(urls, "", "", timeout)
        self.token = token.strip()
        self.secret = secrets.token_hex(32)

    def http_auth(self) -> Any:
        def add(request: httpx.Request) -> httpx.Request:
            request.headers["Authorization"] = f"MoorageJoin {self.token}"
            request.headers["Moorage-Join-Secret"] = self.secret
            return request

        return add

    def unauthorized(self, url: str, resp: httpx.Response) -> ApiRefused:
        try:
            why = str(resp.json().get("error") or "")
        except ValueError:
            why = ""
        why = why or "the join token was refused"
        if WHAT_TO_DO not in why and "moorage join-token create" not in why:
            why += f"; {WHAT_TO_DO}"
        return ApiRefused(401, "UNAUTHORIZED", f"{url}: {why}")
