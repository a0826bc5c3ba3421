"""What a webhook may be: an http(s) URL, a subset of the events, an optional secret and
name. Every refusal is a ValueError that says what is wrong (a 400 in the admin API, a usage
error in the CLI)."""

from __future__ import annotations

import secrets
import time
import urllib.parse
from typing import Any

from moorage.meta.webhooks import WebhookRecord

EVENTS = ("push", "delete", "pull", "mount")
_MAX_URL = 2048
_MAX_NAME = 64
_MAX_SECRET = 256


def check_url(url: object) -> str:
    """An http(s) URL with a host, no credentials, no fragment; ValueError says why not."""
    if not isinstance(url, str) or not url:
        raise ValueError("url is required: the http:// or https:// address of the receiver")
    if len(url) > _MAX_URL:
        raise ValueError(f"url is longer than {_MAX_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("url must not contain spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url must start with http:// or https://, not {url[:100]!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url has an invalid port: {url[:100]!r}") from None
    if not parts.hostname:
        raise ValueError(f"url has no host: {url[:100]!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "url must not carry credentials (they would be shown back); use --secret to let "
            "the receiver check the signature instead"
        )
    if parts.fragment:
        raise ValueError("url must not have a #fragment")
    del port
    return url


def check_events(events: object) -> tuple[str, ...]:
    if isinstance(events, str):
        events = [e.strip() for e in events.split(",") if e.strip()]
    if not isinstance(events, list) or not events:
        raise ValueError("events is required: some of push, delete, pull")
    out: list[str] = []
    for e in events:
        if not isinstance(e, str) or e not in EVENTS:
            raise ValueError(f"unknown event {str(e)[:40]!r}: choose from {', '.join(EVENTS)}")
        if e not in out:
            out.append(e)
    return tuple(out)


def check_secret(secret: object) -> str | None:
    if secret is None or secret == "":
        return None
    if not isinstance(secret, str) or len(secret) > _MAX_SECRET:
        raise ValueError(f"secret must be a string of at most {_MAX_SECRET} characters")
    return secret


def check_name(name: object, url: str) -> str:
    if name is None or name == "":
        return urllib.parse.urlsplit(url).hostname or "webhook"
    if not isinstance(name, str) or len(name) > _MAX_NAME or not name.isprintable():
        raise ValueError(f"name must be printable text of at most {_MAX_NAME} characters")
    return name


def new_webhook(body: dict[str, Any], actor: str) -> WebhookRecord:
    unknown = set(body) - {"url", "events", "secret", "name"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))[:200]}")
    url = check_url(body.get("url"))
    return WebhookRecord(
        id=secrets.token_hex(6),
        url=url,
        events=check_events(body.get("events")),
        name=check_name(body.get("name"), url),
        secret=check_secret(body.get("secret")),
        created_at=round(time.time(), 3),
        created_by=actor,
    )
