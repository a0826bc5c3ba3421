"""Domain errors. They carry no HTTP: `moorage.api.errors` maps them to wire codes."""

from __future__ import annotations


def own_cancellation() -> bool:
    """Whether the CancelledError being handled is the running task's own cancellation. If
    not, a library cancelled a call of its own (grpc does, for the calls in flight on a
    channel being closed): a failure to report or retry, not a reason to stop."""
    import asyncio  # here: the local commands import this module and start without asyncio

    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class MoorageError(Exception):
    """Base of every error a user can cause or an operator must act on."""

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NameInvalid(MoorageError):
    pass


class NameUnknown(MoorageError):
    pass


class DigestInvalid(MoorageError):
    pass


class Unsupported(MoorageError):
    pass


class BlobUnknown(MoorageError):
    pass


class BlobUploadUnknown(MoorageError):
    pass


class BlobUploadInvalid(MoorageError):
    pass


class RangeInvalid(MoorageError):
    """A chunk did not start where the upload ends; `current_size` says where it does."""

    def __init__(self, message: str, current_size: int) -> None:
        super().__init__(message)
        self.current_size = current_size


class RangeNotSatisfiable(MoorageError):
    """A blob GET asked for a byte range outside the blob; `size` is the blob's size."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class SizeInvalid(MoorageError):
    pass


class ManifestInvalid(MoorageError):
    pass


class ManifestTooLarge(MoorageError):
    pass


class ManifestUnknown(MoorageError):
    pass


class ManifestBlobUnknown(MoorageError):
    pass


class PaginationInvalid(MoorageError):
    pass


class Unauthorized(MoorageError):
    pass


class Denied(MoorageError):
    pass


class StoreUnavailable(MoorageError):
    """The metadata store cannot answer (etcd down or without quorum)."""


class StoreReadOnly(StoreUnavailable):
    """Reads work from the local copy, writes cannot be committed."""


class StorageUnavailable(MoorageError):
    """Blob storage failed (disk full, I/O error, permission)."""


class ConfigError(MoorageError):
    pass


class UploadBusy(RangeInvalid):
    """Another request (on any replica) is appending to, finishing or cancelling the upload
    session; `current_size` is its size as this request found it."""


class LoginThrottled(MoorageError):
    """Too many failed logins (per account or client address), or too many being checked:
    refused without checking the password; `retry_after` says in how many seconds to retry."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after


class RecordCorrupt(MoorageError):
    """A record read back from the metadata store, a backup archive or the journal fails
    validation (corrupt or forged): it is refused, never turned into a path or a key."""


class JoinTokenRefused(Unauthorized):
    """A join token that is unknown, expired, revoked or used by another join (a 401)."""


# -- access tokens and robot accounts (moorage.auth.access_tokens) --------------------------
class AccessTokenRefused(Denied):
    """A token request the caller may not make (a robot without admin rights, a token
    making tokens, another user's tokens): a 403."""


class AccessTokenUnknown(MoorageError):
    """No access token of that id that the caller may see: a 404."""


class TooManyAccessTokens(MoorageError):
    """The user or robot has the most live tokens allowed already: a 409."""


# -- repository policies (moorage.registry.policies, issue #10 items 2-5) -----------------------
class TagImmutable(Denied):
    """A push that would move an immutable tag, or a delete of one (a 403 naming the rule)."""


class QuotaExceeded(Denied):
    """A push that would take a namespace over its storage quota (a 403 with the numbers:
    `detail` holds namespace, used, quota and needed bytes)."""


class BlobCollecting(MoorageError):
    """Garbage collection is deleting this blob right now: store it again (a retry)."""
