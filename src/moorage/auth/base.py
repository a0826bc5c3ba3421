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
    async def authenticate(self, authorization: str | None) -> Identity | None:
        """The identity an Authorization header proves, or None."""
