"""The whole etcd key layout, in one place.

    /moorage/cluster                              {"cluster_id", "epoch"}
    /moorage/users/<name>                         {"name", "password_hash", "role"}
    /moorage/repos/<repo>                         {}            (the catalog)
    /moorage/blobs/<repo>@<digest>                {"size"}      (repo may serve the blob)
    /moorage/manifests/<repo>@<digest>            manifest record
    /moorage/tags/<repo>@<tag>                    {"digest", "media_type", "size"}
    /moorage/referrers/<repo>@<subject>@<digest>  the referrer's descriptor

`@` cannot occur in a repository name, so `<repo>@` is a prefix of exactly that
repository's keys and never of another's (`a@` is not a prefix of `a/b@`).
Values are small JSON documents; manifest bytes live in blob storage, and so do upload
sessions (`uploads/<id>` and `uploads/<id>.repo`), so starting an upload costs no write here.
"""

from __future__ import annotations

ROOT = b"/moorage/"
CLUSTER = ROOT + b"cluster"
USERS = ROOT + b"users/"
REPOS = ROOT + b"repos/"
BLOBS = ROOT + b"blobs/"
MANIFESTS = ROOT + b"manifests/"
TAGS = ROOT + b"tags/"
REFERRERS = ROOT + b"referrers/"
#: What registry data is made of: a member is as up to date as its newest change here.
REGISTRY_DATA: tuple[bytes, ...] = (CLUSTER, USERS, REPOS, BLOBS, MANIFESTS, TAGS, REFERRERS)
#: `{"key": 64 hex digits}`: the HMAC key of the journal's account changes (made once, by
#: the first replica that starts; moorage.meta.account_journal). Under ROOT: backups carry
#: it, so a restore can tell the old cluster's own entries from forged ones.
JOURNAL_KEY = ROOT + b"journal-key"
REGISTRY_DATA = (*REGISTRY_DATA, JOURNAL_KEY)
#: Rewritten by every transaction that changes registry data (deletes included), so the
#: newest change is found by reading one key. Outside ROOT: not registry data itself, so
#: backups and restores never carry it.
LAST_CHANGE = b"/moorage-last-change"
#: Failed logins, one lease-backed key each (moorage.auth.ledger):
#: `<AUTH_FAILURES><hash of the limit's key>/<unix ms>-<random>`. Outside ROOT too.
AUTH_FAILURES = b"/moorage-auth/failures/"
#: `<AUTH_KNOWN><hash of account and client address>`: that address logged in to that account
#: (auth.ledger), on a lease of about a week. Outside ROOT too.
AUTH_KNOWN = b"/moorage-auth/known/"
#: The cluster CA (moorage.pki, DESIGN.md §7): its certificate (PEM) and its private key
#: SEALED with the cluster secret that only the replicas' `D/tls/cluster.secret` holds
#: (moorage.pki.ca.seal_ca_key). Outside ROOT: snapshots and backups never carry them (a
#: restore makes a new cluster, hence a new CA).
PKI_CA_CERT = b"/moorage-pki/ca.crt"
PKI_CA_KEY = b"/moorage-pki/ca.key.sealed"
#: A CA rotation in progress (moorage.cluster.ca_rotation): its phase, both CA certificates
#: and both sealed keys; deleted when the rotation finishes.
PKI_CA_ROTATION = b"/moorage-pki/rotation"


#: The tag caches of the API processes (moorage.meta.tag_cache), outside ROOT (operational,
#: never backed up): `<TAG_CACHE_MEMBERS><replica id>-<pid>`, one lease-backed key per cache,
#: `{"lease", "progress"}` (the revision up to which its watch has applied tag changes).
TAG_CACHE_MEMBERS = b"/moorage-tag-cache/members/"


def tag_cache_member(name: str) -> bytes:
    return TAG_CACHE_MEMBERS + name.encode()


#: Webhooks (moorage.meta.webhooks, moorage.cluster.webhooks), outside ROOT: operational
#: state that backups do not carry.
#:     hooks/<id>                   the webhook: url, events, secret (sealed, never shown back)
#:     set                          rewritten with every add and remove of a webhook: a push's
#:                                  transaction is guarded by the revision it knew it at
#:     outbox/<seq>                 a push's or delete's event, written in its transaction
#:     queue/<id>/<due>             an event waiting for delivery to that webhook, keyed by
#:                                  when it is due (its time, then its next attempt's)
#:     claims/<id>/<seq>            lease-backed: the worker delivering that event now
#:     deliveries/<id>/<seq>        the outcome of one delivery (the last few kept)
WEBHOOKS = b"/moorage-webhooks/"
WEBHOOK_HOOKS = WEBHOOKS + b"hooks/"
WEBHOOK_OUTBOX = WEBHOOKS + b"outbox/"
WEBHOOK_QUEUE = WEBHOOKS + b"queue/"
WEBHOOK_CLAIMS = WEBHOOKS + b"claims/"
WEBHOOK_DELIVERIES = WEBHOOKS + b"deliveries/"
WEBHOOK_SET = WEBHOOKS + b"set"


def webhook(hook_id: str) -> bytes:
    return WEBHOOK_HOOKS + hook_id.encode()


def webhook_outbox(seq: str = "") -> bytes:
    return WEBHOOK_OUTBOX + seq.encode()


def webhook_queue(hook_id: str, seq: str = "") -> bytes:
    """An event queued for `hook_id`; without `seq`, the prefix of its whole queue."""
    return WEBHOOK_QUEUE + f"{hook_id}/{seq}".encode()


def webhook_claim(hook_id: str, seq: str = "") -> bytes:
    return WEBHOOK_CLAIMS + f"{hook_id}/{seq}".encode()


def webhook_delivery(hook_id: str, seq: str = "") -> bytes:
    return WEBHOOK_DELIVERIES + f"{hook_id}/{seq}".encode()


def is_registry_data(key: bytes) -> bool:
    return key.startswith(REGISTRY_DATA)


def user(name: str) -> bytes:
    return USERS + name.encode()


def repo(name: str) -> bytes:
    return REPOS + name.encode()


def blob(repo_name: str, digest: str) -> bytes:
    return BLOBS + f"{repo_name}@{digest}".encode()


def manifest(repo_name: str, digest: str) -> bytes:
    return MANIFESTS + f"{repo_name}@{digest}".encode()


def tag(repo_name: str, tag_name: str) -> bytes:
    return TAGS + f"{repo_name}@{tag_name}".encode()


def tags_prefix(repo_name: str) -> bytes:
    return TAGS + f"{repo_name}@".encode()


def referrer(repo_name: str, subject: str, digest: str) -> bytes:
    return REFERRERS + f"{repo_name}@{subject}@{digest}".encode()


def referrers_prefix(repo_name: str, subject: str) -> bytes:
    return REFERRERS + f"{repo_name}@{subject}@".encode()


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


REPLICAS = ROOT + b"replicas/"
HEARTBEATS = ROOT + b"heartbeats/"
LOCKS = ROOT + b"locks/"


def replica(replica_id: str) -> bytes:
    """`/moorage/replicas/<id>`: {"replica_id", "url", "etcd_peer_url", ...} (one per replica)."""
    return REPLICAS + replica_id.encode()


def heartbeat(replica_id: str) -> bytes:
    """`/moorage/heartbeats/<id>`: lease-backed, disappears when the replica stops renewing."""
    return HEARTBEATS + replica_id.encode()


def lock(name: str) -> bytes:
    """`/moorage/locks/<name>`: lease-backed mutual exclusion (e.g. one join at a time)."""
    return LOCKS + name.encode()


#: Kinds of keys under ROOT, as `parse` names them.
_KINDS: tuple[tuple[bytes, str, int], ...] = (
    # (prefix, kind, number of `@`-separated fields; 1 = the whole rest)
    (USERS, "user", 1),
    (REPOS, "repository", 1),
    (BLOBS, "blob_link", 2),
    (MANIFESTS, "manifest", 2),
    (TAGS, "tag", 2),
    (REFERRERS, "referrer", 3),
    (REPLICAS, "replica", 1),
    (HEARTBEATS, "heartbeat", 1),
    (LOCKS, "lock", 1),
)


def parse(key: bytes) -> tuple[str, tuple[str, ...]] | None:
    """What a key is: (kind, its fields), e.g. ("tag", (repo, tag)); ("cluster", ());
    ("other", (rest,)) for an unknown key under ROOT; None for a key outside ROOT.

    The fields are not validated (a repository name, a digest): the caller checks them.
    A key with the wrong number of `@`-separated fields is ("invalid", (rest,)).
    """
    if key == CLUSTER:
        return "cluster", ()
    if key == JOURNAL_KEY:
        return "journal_key", ()
    if not key.startswith(ROOT):
        return None
    text = key.decode(errors="replace")
    for prefix, kind, count in _KINDS:
        if key.startswith(prefix):
            rest = text[len(prefix) :]
            if count == 1:
                return kind, (rest,)
            if count == 2:
                head, sep, tail = rest.rpartition("@")
                return (kind, (head, tail)) if sep else ("invalid", (rest,))
            parts = rest.split("@")
            return (kind, tuple(parts)) if len(parts) == count else ("invalid", (rest,))
    return "other", (text[len(ROOT) :],)


#: Join tokens (moorage.cluster.join_tokens, DESIGN.md §7), outside ROOT (never backed up):
#: `<JOIN_TOKENS><sha256 hex of the token>` {"id", "created_at", "expires_at", "created_by"},
#: on a lease of the token's ttl (etcd deletes it when it expires); the token itself is never
#: stored. `<JOIN_CLAIMS><same hash>` is created once, by the one join that uses the token
#: (guarded: exactly one wins), on a lease that outlives the token's.
JOIN_TOKENS = b"/moorage-join/tokens/"
JOIN_CLAIMS = b"/moorage-join/claims/"


def join_token(digest: str) -> bytes:
    return JOIN_TOKENS + digest.encode()


def join_claim(digest: str) -> bytes:
    return JOIN_CLAIMS + digest.encode()


# -- access tokens and robot accounts (moorage.auth.access_tokens, issue #9 item 3) --------
#: `<ACCESS_TOKENS><id>`                   AccessTokenRecord (the secret only as its SHA-256)
#: `<ACCESS_TOKEN_OWNERS><owner>@<id>`     {}  (bounded per-owner listing and counting)
#: `<ACCESS_TOKEN_USED><id>`               {"at", "client"} (last use, written at most once
#:                                         a minute per token and process)
#: Tokens and their owner index are registry data (backed up, journaled, compared by
#: emergency repair); the owner index is derived from the token record, so a snapshot
#: leaves it out (a restore writes it with the token), and so it does the last-use stamps.
ACCESS_TOKENS = ROOT + b"access-tokens/"
ACCESS_TOKEN_OWNERS = ROOT + b"access-token-owners/"
ACCESS_TOKEN_USED = ROOT + b"access-token-used/"
REGISTRY_DATA = (*REGISTRY_DATA, ACCESS_TOKENS, ACCESS_TOKEN_OWNERS)


def access_token(token_id: str) -> bytes:
    return ACCESS_TOKENS + token_id.encode()


def access_token_owner(owner: str, token_id: str = "") -> bytes:
    """The owner's index key of `token_id`; with no id, the prefix of all the owner's."""
    return ACCESS_TOKEN_OWNERS + f"{owner}@{token_id}".encode()


def access_token_used(token_id: str) -> bytes:
    return ACCESS_TOKEN_USED + token_id.encode()


# --- token signing keys (moorage.auth.signing_keys; issue #9, Docker token flow) -----------
#: ES256 keys that sign the registry's JWTs, one record each: `<TOKEN_KEYS><kid>`
#: {"kid", "created_at", "jwk", "sealed"} (the private key sealed with the cluster secret,
#: as the CA key is); `TOKEN_KEY_NEWEST` holds the newest kid, and guards a rotation (one
#: replica wins). Outside ROOT: backups never carry them (a restore is a new cluster with a
#: new secret; it makes new keys when it first issues a token).
TOKEN_KEYS = b"/moorage-jwt/keys/"
TOKEN_KEY_NEWEST = b"/moorage-jwt/newest"


def token_key(kid: str) -> bytes:
    return TOKEN_KEYS + kid.encode()


#: The cluster-wide audit log (moorage.audit.log), outside ROOT (never in backups: a restore
#: makes a new cluster, whose log starts with the restore itself):
#: `<AUDIT_EVENTS><unix µs, 17 digits>-<origin>-<sequence, 8 hex>` -> the event (JSON). Keys
#: sort by time, so a time range is a key range and paging resumes after the last key read.
AUDIT_EVENTS = b"/moorage-audit/events/"

#: Web UI sessions signed out (moorage.meta.ui_sessions), outside ROOT (operational, never
#: in a backup): `<UI_SIGNED_OUT><session id>` (empty), each on a lease of its own that ends
#: when the session would have expired anyway.
UI_SIGNED_OUT = b"/moorage-ui/signed-out/"


def ui_signed_out(session_id: str) -> bytes:
    return UI_SIGNED_OUT + session_id.encode()


# -- accounts and permissions (issue #9, moorage.auth.policy) --------------------------------
#
#     /moorage/access/orgs/<org>                     {"name"}
#     /moorage/access/teams/<org>/<team>             {"org", "name", "members"}
#     /moorage/access/memberships/<user>@<org>/<team> {}   (the teams of a user, by prefix)
#     /moorage/access/grants/<target>@<subject>      {"target", "subject", "role"}
#     /moorage/access/public/<repo>                  {}   (anonymous pull)
#
# Users stay under USERS. The grants on one target are one prefix (`<target>@`), so the
# policy reads the grants of a namespace and of a repository with two bounded reads.
ACCESS = ROOT + b"access/"
ORGS = ACCESS + b"orgs/"
TEAMS = ACCESS + b"teams/"
MEMBERSHIPS = ACCESS + b"memberships/"
GRANTS = ACCESS + b"grants/"
PUBLIC = ACCESS + b"public/"
REGISTRY_DATA = (*REGISTRY_DATA, ACCESS)


def org(name: str) -> bytes:
    return ORGS + name.encode()


def team(org_name: str, team_name: str) -> bytes:
    return TEAMS + f"{org_name}/{team_name}".encode()


def teams_prefix(org_name: str) -> bytes:
    return TEAMS + f"{org_name}/".encode()


def membership(user_name: str, org_name: str, team_name: str) -> bytes:
    return MEMBERSHIPS + f"{user_name}@{org_name}/{team_name}".encode()


def memberships_prefix(user_name: str) -> bytes:
    return MEMBERSHIPS + f"{user_name}@".encode()


def grant(target: str, subject: str) -> bytes:
    return GRANTS + f"{target}@{subject}".encode()


def grants_prefix(target: str) -> bytes:
    return GRANTS + f"{target}@".encode()


def public(repo_name: str) -> bytes:
    return PUBLIC + repo_name.encode()


_KINDS = (
    (ACCESS_TOKENS, "access_token", 1),
    (ACCESS_TOKEN_OWNERS, "access_token_owner", 2),
    (ACCESS_TOKEN_USED, "access_token_used", 1),
    (ORGS, "org", 1),
    (TEAMS, "team", 1),
    (MEMBERSHIPS, "membership", 2),
    (GRANTS, "grant", 2),
    (PUBLIC, "public", 1),
    *_KINDS,
)


# -- repository policies and storage usage (moorage.meta.policies, moorage.meta.usage) -------
#
#     /moorage/policies/<target>              PolicyRecord (target: NAMESPACE or NAMESPACE/REPO)
#     /moorage/usage/<namespace>#<k>          {"bytes", "blobs"}  (the quota's counter, in
#                                             USAGE_SHARDS parts: the sum is the usage)
#     /moorage/usage-blobs/<namespace>@<digest>  {"size", "repos"}  (the blob counted once in
#                                             the namespace; `repos` links point at it)
#
# Policies are registry data (backed up, restored). The usage keys are not: a restore
# writes blob links back uncounted and `moorage.meta.usage.recount` counts them again.
POLICIES = ROOT + b"policies/"
USAGE = ROOT + b"usage/"
USAGE_BLOBS = ROOT + b"usage-blobs/"
REGISTRY_DATA = (*REGISTRY_DATA, POLICIES)


def policy(target: str) -> bytes:
    return POLICIES + target.encode()


#: A namespace's usage counter is kept in this many keys, so pushes into a namespace without a
#: quota do not all collide on one key (a quota check reads and guards them all).
USAGE_SHARDS = 8


def usage(namespace: str, shard: int) -> bytes:
    return USAGE + f"{namespace}#{shard}".encode()


def usage_blob(namespace: str, digest: str) -> bytes:
    return USAGE_BLOBS + f"{namespace}@{digest}".encode()


_KINDS = ((POLICIES, "policy", 1), *_KINDS)


# -- online garbage collection (moorage.registry.gc, DESIGN.md §8) ---------------------------
#
#     /moorage-gc/deleting/<digest>                  {"run", "at"}  a blob being collected
#     /moorage-gc/deleting-manifests/<repo>@<digest> {"run", "at"}  an untagged manifest being
#                                                                   collected
#     /moorage-gc/pending/<repo>@<digest>            {"at"}  a manifest recorded in several
#                                                            transactions (more references
#                                                            than one holds), until recorded
#     /moorage-gc/progress                           the running collection's progress
#     /moorage-gc/last                               the last collection's result
#     /moorage-gc/schedule                           {"interval", "grace", "untagged"}
#
# A tombstone ("deleting") is written before anything of its blob or manifest is deleted
# and removed last; every write that would make the blob or manifest needed again (a blob
# link, a manifest PUT referencing it) is guarded by its absence. Outside ROOT: never in a
# backup (a restore starts without a collection in progress). The lock is `lock("gc")`.
GC = b"/moorage-gc/"
GC_DELETING = GC + b"deleting/"
GC_DELETING_MANIFESTS = GC + b"deleting-manifests/"
GC_PENDING = GC + b"pending/"
GC_PROGRESS = GC + b"progress"
GC_LAST = GC + b"last"
GC_SCHEDULE = GC + b"schedule"
GC_LOCK = "gc"


def blob_tombstone(digest: str) -> bytes:
    return GC_DELETING + digest.encode()


def manifest_tombstone(repo_name: str, digest: str) -> bytes:
    return GC_DELETING_MANIFESTS + f"{repo_name}@{digest}".encode()


def pending_manifest(repo_name: str, digest: str) -> bytes:
    return GC_PENDING + f"{repo_name}@{digest}".encode()


# The journal's trimming (moorage.cluster.journal_trim), outside ROOT (never in a backup:
# a restore is a new cluster whose journal trimming starts over):
#     /moorage-journal/backup   {"epoch", "revision"} of the newest backup written whole
#     /moorage-journal/trim     the last trim: its floor, what it deleted, when
JOURNAL_BACKUP = b"/moorage-journal/backup"
JOURNAL_TRIM = b"/moorage-journal/trim"
JOURNAL_TRIM_LOCK = "journal-trim"
# The lock of etcd's compaction and defragmentation round (moorage.cluster.etcd_defrag).
ETCD_DEFRAG_LOCK = "etcd-defrag"
