"""The authentication interface the API depends on."""

from __future__ import annotations

from abc import ABC, abstractmethod

from moorage.auth.access import Principal


class Authenticator(ABC):
    #: Sent in WWW-Authenticate with every 401.
    challenge: str = 'Basic realm="moorage"'

    @abstractmethod
    async def authenticate(
        self, authorization: str | None, client: str | None = None
    ) -> Principal | None:
        """The principal an Authorization header proves; ANONYMOUS without one (no
        Authorization header at all); None for credentials that prove nothing (a 401).

        `client` is the peer's address (failed logins are limited per address). Raises
        LoginThrottled (429) when too many attempts failed, StoreUnavailable (503) when
        the user cannot be looked up; never anything else for any header value.
        """
