"""The referrers of a manifest, a page at a time (the referrers API, the UI).

A subject can gather any number of referrers (signatures, SBOMs, attestations), each
stored with its descriptor, annotations included (up to the manifest size limit). So no
listing reads them all: a page holds at most `limit` descriptors and `size` bytes of them
(one at least, whatever its size), read in one bounded read, and says which referrer
digest the next page starts after.
"""

from __future__ import annotations

import json
from typing import Any

from moorage.meta import keys
from moorage.meta.base import STORE_PAGE, MetaStore


async def referrers_page(
    meta: MetaStore, repo: str, subject: str, limit: int, size: int, after: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """The descriptors of `subject`'s referrers in `repo` after the referrer digest `after`
    (key order), and the digest to continue after, or None when there are no more."""
    prefix = keys.referrers_prefix(repo, subject)
    start = prefix + after.encode() + b"\x00" if after else prefix
    kvs, more = await meta._range(start, keys.prefix_end(prefix), limit=min(limit, STORE_PAGE))
    out: list[dict[str, Any]] = []
    for i, kv in enumerate(kvs):
        size -= len(kv.value)
        if out and size < 0:  # the byte budget is spent: this one starts the next page
            kvs, more = kvs[:i], True
            break
        out.append(json.loads(kv.value))
    return out, kvs[-1].key[len(prefix) :].decode() if more and kvs else None
