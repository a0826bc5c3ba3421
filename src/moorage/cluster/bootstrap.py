"""First-start initialisation of the store: the cluster record, the journal key and the
admin account."""

from __future__ import annotations

import logging

from moorage.auth.passwords import hash_password, verify_password
from moorage.meta.account_journal import ensure_journal_key
from moorage.meta.base import MetaStore
from moorage.meta.records import ClusterRecord, UserRecord

log = logging.getLogger("moorage.bootstrap")
ADMIN_USER = "admin"


async def bootstrap(meta: MetaStore, cluster_id: str, admin_password: str | None) -> None:
    """Idempotent: creates what is missing; a given admin password replaces the stored one."""
    if await meta.get_cluster() is None:
        await meta.create_cluster(ClusterRecord(cluster_id))
    if admin_password is not None:
        user = await meta.get_user(ADMIN_USER)
        if user is None:
            await meta.create_user(UserRecord(ADMIN_USER, hash_password(admin_password)))
        elif not verify_password(user.password_hash, admin_password):
            await meta.put_user(UserRecord(ADMIN_USER, hash_password(admin_password), user.role))
            log.warning("admin password changed to the one in MOORAGE_ADMIN_PASSWORD")
    # Made at the first start, long committed before an account change needs it (a survivor
    # of an emergency repair must hold the key its journal entries were sealed with).
    await ensure_journal_key(meta)


async def has_admin(meta: MetaStore) -> bool:
    return await meta.get_user(ADMIN_USER) is not None
