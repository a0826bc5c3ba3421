"""Name ranges of the catalog: the repositories (or public repositories) whose names start with
a prefix, read in pages of one key range, and which of a list of names exist (one batched
read). The web UI's repository list reads the catalog through these, so a search by prefix
never reads the other names."""

from __future__ import annotations

from collections.abc import Sequence

from moorage.meta import keys
from moorage.meta.base import STORE_PAGE, MetaStore


async def names_under(
    meta: MetaStore, root: bytes, prefix: str, n: int, last: str | None
) -> tuple[list[str], bool]:
    """Up to `n` (>0) names under `root` that start with `prefix`, after `last`."""
    base = root + prefix.encode()
    end = keys.prefix_end(base) if prefix else keys.prefix_end(root)
    start = root + last.encode() + b"\x00" if last and last >= prefix else base
    out: list[str] = []
    while start < end:
        kvs, more = await meta._range(start, end, min(n - len(out), STORE_PAGE), True)
        out += [kv.key[len(root) :].decode() for kv in kvs]
        if not more or not kvs:
            return out, False
        if len(out) >= n:
            return out, True
        start = kvs[-1].key + b"\x00"
    return out, False


async def repos_prefixed(
    meta: MetaStore, prefix: str, n: int, last: str | None
) -> tuple[list[str], bool]:
    """Up to `n` repository names that start with `prefix`, after `last`: one key range of the
    catalog, read in pages."""
    return await names_under(meta, keys.REPOS, prefix, n, last)


async def existing_repos(meta: MetaStore, names: Sequence[str]) -> list[str]:
    """The names of `names` that are in the catalog (one batched read), in their order."""
    found = await meta._get_many([keys.repo(n) for n in names])
    return [n for n, kv in zip(names, found, strict=True) if kv is not None]
