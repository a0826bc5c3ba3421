"""Where S3 blob storage is: `--storage s3://BUCKET/PREFIX?endpoint=URL&region=R`, and the
client that reaches it.

The query takes:

- `endpoint`: the store's URL (`https://s3.example.net:9000`); absent, AWS's own endpoint
  for the region.
- `region`: the signing region (default `us-east-1`, what S3-compatible servers accept).
- `addressing`: `path` (`https://host/bucket/key`, the default with an `endpoint`: what
  MinIO, Ceph RGW and SeaweedFS serve) or `virtual` (`https://bucket.host/key`, the default
  on AWS).
- `ca`: a PEM file of CA certificates the endpoint's TLS certificate must chain to (the
  system's CAs otherwise).
- `redirect`: `on` answers a blob GET or HEAD with `307` to a presigned URL of the object
  (valid `REDIRECT_SECONDS`), so the bytes flow from the store to the client, as
  Distribution's `redirect`; `off` (the default) streams them through the replica. Only for
  stores every client can reach at the endpoint the replicas use.

Credentials are never in the URL: they come from the environment and files as the AWS tools
read them (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE`
in `~/.aws/credentials` and `~/.aws/config`, web identity, the instance metadata service),
through botocore's own chain.
"""

from __future__ import annotations

import contextlib
import re
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from moorage.errors import ConfigError

if TYPE_CHECKING:
    import asyncio

    from aiobotocore.session import AioSession
    from botocore.loaders import Loader
    from types_aiobotocore_s3 import S3Client

SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"
_PARAMS = frozenset({"endpoint", "region", "addressing", "ca", "redirect"})
#: How long a presigned redirect URL stays valid (Distribution's is 20 minutes too).
REDIRECT_SECONDS = 20 * 60
# S3's bucket naming rules (lowercase letters, digits, dots and hyphens, 3-63 long).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{1,64}$")
_PREFIX_PART = re.compile(r"^[A-Za-z0-9._-]+$")


def is_s3(spec: str) -> bool:
    return spec.startswith(SCHEME)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)
    endpoint: str | None
    region: str
    addressing: str  # "path" or "virtual"
    ca: str | None
    redirect: bool = False

    def key(self, name: str) -> str:
        """The object key of `name` (relative to the prefix)."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self) -> str:
        """The canonical `--storage` value (what replicas record and compare)."""
        query = []
        if self.endpoint is not None:
            query.append(f"endpoint={self.endpoint}")
        query.append(f"region={self.region}")
        if self.addressing != _default_addressing(self.endpoint):
            query.append(f"addressing={self.addressing}")
        if self.ca is not None:
            query.append(f"ca={self.ca}")
        if self.redirect:
            query.append("redirect=on")
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"{SCHEME}{path}?{'&'.join(query)}"

    def __str__(self) -> str:
        return self.url()


def _default_addressing(endpoint: str | None) -> str:
    return "path" if endpoint is not None else "virtual"


def parse(spec: str) -> S3Location:
    """The location a `--storage s3://...` value names; ConfigError saying what is wrong."""
    if not is_s3(spec):
        raise ConfigError(f"{spec!r} is not an S3 location (s3://BUCKET/PREFIX?endpoint=URL)")
    parts = urlsplit(spec)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ConfigError(
            "S3 credentials do not go in --storage: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment"
        )
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"bucket name {bucket!r} is not valid: 3-63 lowercase letters, digits, dots, hyphens"
        )
    prefix = parts.path.strip("/")
    for part in prefix.split("/") if prefix else ():
        if not _PREFIX_PART.match(part) or part in (".", ".."):
            raise ConfigError(
                f"prefix {prefix!r} is not valid: segments of letters, digits, '.', '_', '-'"
            )
    if parts.fragment:
        raise ConfigError(f"{spec!r}: a '#' has no meaning in an S3 location")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(f"{spec!r}: the query is not NAME=VALUE pairs joined by '&'") from None
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise ConfigError(
            f"unknown S3 option {unknown[0]!r}: the query takes {', '.join(sorted(_PARAMS))}"
        )
    values: dict[str, str] = {}
    for name, given in query.items():
        if len(given) != 1 or not given[0]:
            raise ConfigError(f"S3 option {name!r} needs exactly one non-empty value")
        values[name] = given[0]
    endpoint = values.get("endpoint")
    if endpoint is not None:
        endpoint = endpoint.rstrip("/")
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname or ep.path or ep.query:
            raise ConfigError(
                f"endpoint {endpoint!r} is not a URL like https://HOST[:PORT] (no path)"
            )
        try:
            ep.port  # noqa: B018  (raises on a port out of range)
        except ValueError:
            raise ConfigError(f"endpoint {endpoint!r} has an invalid port") from None
    region = values.get("region", DEFAULT_REGION)
    if not _REGION.match(region):
        raise ConfigError(f"region {region!r} is not valid (like us-east-1)")
    addressing = values.get("addressing", _default_addressing(endpoint))
    if addressing not in ("path", "virtual"):
        raise ConfigError(f"addressing {addressing!r}: use path or virtual")
    ca = values.get("ca")
    if ca is not None:
        if not Path(ca).is_absolute():
            raise ConfigError(f"ca {ca!r} must be an absolute path to a PEM file")
        if not Path(ca).is_file():
            raise ConfigError(f"ca file {ca} does not exist")
    redirect = values.get("redirect", "off")
    if redirect not in ("on", "off"):
        raise ConfigError(f"redirect {redirect!r}: use on or off")
    return S3Location(bucket, prefix, endpoint, region, addressing, ca, redirect == "on")


@contextlib.asynccontextmanager
async def open_client(
    location: S3Location,
    *,
    max_connections: int = 64,
    read_timeout: float = 30.0,
    attempts: int = 3,
) -> AsyncIterator[S3Client]:
    """An aiobotocore S3 client for `location` (credentials from botocore's chain); each
    request is tried `attempts` times in all (botocore's `max_attempts` counts only the
    retries: it tried one more time than asked, and the one-shot probes twice)."""
    from aiobotocore.config import AioConfig

    config = AioConfig(
        region_name=location.region,
        signature_version="s3v4",
        s3={"addressing_style": location.addressing},
        retries={"total_max_attempts": attempts, "mode": "standard"},
        connect_timeout=min(read_timeout, 10.0),
        read_timeout=read_timeout,
        max_pool_connections=max_connections,
    )
    session = _session()
    verify: str | bool = location.ca if location.ca is not None else True
    async with session.create_client(
        "s3", endpoint_url=location.endpoint, config=config, verify=verify
    ) as client:
        yield client


# A new aiobotocore session reads and parses botocore's S3 service model and endpoint data
# again: 250-850 ms of CPU per client. Every client of a process shares one loader (its
# parsed JSON is cached and loop-independent), and every client of one event loop shares one
# session (its resolved credentials and their refresh lock belong to that loop).
_loader: Loader | None = None
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AioSession] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _session() -> AioSession:
    import asyncio  # here: `moorage` commands parse --storage without an event loop

    from aiobotocore.session import get_session
    from botocore.loaders import create_loader

    global _loader
    loop = asyncio.get_running_loop()
    with _lock:
        session = _sessions.get(loop)
        if session is None:
            if _loader is None:
                _loader = create_loader()
            session = get_session()
            session.register_component("data_loader", _loader)
            _sessions[loop] = session
        return session
