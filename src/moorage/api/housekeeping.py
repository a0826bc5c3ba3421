"""Background housekeeping of one API worker: abandoned uploads and staging files.

A client that starts an upload and never finishes it leaves its bytes in `uploads/`; a
crash mid-write can leave a staging file in `tmp/`. Every replica's workers purge what has
not been touched for `MOORAGE_UPLOAD_MAX_AGE` seconds (default 7 days, as Distribution's
upload purging), every `MOORAGE_UPLOAD_PURGE_INTERVAL` seconds (default 1 hour). Replicas
and workers may race on the same file; a file another one removed first is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random

from moorage.errors import MoorageError
from moorage.storage.base import BlobStorage

log = logging.getLogger("moorage.housekeeping")
DEFAULT_UPLOAD_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_PURGE_INTERVAL = 3600.0
TMP_MAX_AGE = 24 * 3600.0


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", name, raw, default)
        return default
    return value if value > 0 else default


async def purge_loop(storage: BlobStorage) -> None:
    max_age = _seconds("MOORAGE_UPLOAD_MAX_AGE", DEFAULT_UPLOAD_MAX_AGE)
    interval = _seconds("MOORAGE_UPLOAD_PURGE_INTERVAL", DEFAULT_PURGE_INTERVAL)
    # Spread the workers and replicas out instead of all scanning at once.
    await asyncio.sleep(random.uniform(0, min(interval, 60.0)))
    while True:
        try:
            removed = await storage.purge_stale(max_age, min(max_age, TMP_MAX_AGE))
        except MoorageError as exc:
            log.warning("upload purge failed: %s", exc)
        else:
            if removed:
                log.info("purged %d abandoned upload or staging file(s)", removed)
        await asyncio.sleep(interval)
