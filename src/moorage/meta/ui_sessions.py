"""Web UI sessions ended by sign out, for every replica to refuse (moorage.web.session).

    /moorage-ui/signed-out/<session id>    (empty)    on a lease of its own

A session cookie is signed, not stored, so signing out cannot delete it: `end` records its
random id instead, on a lease whose TTL is what is left of the session plus a margin for the
replicas' clocks, so the key disappears once the cookie would be refused for its age anyway
and the prefix never holds more than the sign-outs of the last 8 hours. It returns once etcd
has committed the key (the sign out is answered only then). `ended` is one read of one key,
made by every UI request whose cookie verifies: linearizable, so a sign out answered by one
replica is seen by the next request on any other. Like every read of the store it falls back
to this member's own copy during an election or without quorum (the UI keeps working on a
replica cut off from the majority); StoreUnavailable when even that cannot be read, and the
caller refuses the request.
"""

from __future__ import annotations

from moorage.errors import StoreUnavailable
from moorage.meta import keys
from moorage.meta.base import MetaStore
from moorage.meta.cluster_store import ClusterStore


async def end(store: MetaStore, session_id: str, ttl: int) -> None:
    """Record the session `session_id` as signed out for `ttl` seconds (etcd rounds a TTL
    below its minimum up); returns once the key is committed. A lease granted by an attempt
    that failed afterwards is never used and expires on its own."""
    if not isinstance(store, ClusterStore):
        raise StoreUnavailable("this store keeps no leases: a sign out cannot be recorded")
    lease = await store.grant_lease(ttl)
    await store.put_with_lease(keys.ui_signed_out(session_id), b"", lease)


async def ended(store: MetaStore, session_id: str) -> bool:
    """Whether the session `session_id` was signed out (one read of one key)."""
    return await store._get(keys.ui_signed_out(session_id)) is not None
