"""The authentication interface the API depends on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str


class Authenticator(ABC):
    #: Sent in WWW-Authenticate with every 401.
    challenge: str = 'Basic realm="moorage"'

    @abstractmethod
    async def authenticate(
        self, authorization: str | None, client: str | None = None
    ) -> Identity | None:
        """The identity an Authorization header proves, or None.

        `client` is the peer's address (failed logins are limited per address). Raises
        LoginThrottled (429) when too many attempts failed, StoreUnavailable (503) when
        the user cannot be looked up; never anything else for any header value.
        """
