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
REGISTRY_DATA = (CLUSTER, USERS, REPOS, BLOBS, MANIFESTS, TAGS, REFERRERS)
#: Rewritten by every transaction that changes registry data (deletes included), so the
#: newest change is found by reading one key. Outside ROOT: not registry data itself, so
#: backups and restores never carry it.
LAST_CHANGE = b"/moorage-last-change"
#: Failed logins, one lease-backed key each (moorage.auth.ledger):
#: `<AUTH_FAILURES><hash of the limit's key>/<unix ms>-<random>`. Outside ROOT too.
AUTH_FAILURES = b"/moorage-auth/failures/"
#: The cluster CA (moorage.pki, DESIGN.md §7): its certificate (PEM) and its private key
#: SEALED with the cluster secret that only the replicas' `D/tls/cluster.secret` holds
#: (moorage.pki.ca.seal_ca_key). Outside ROOT: snapshots and backups never carry them (a
#: restore makes a new cluster, hence a new CA).
PKI_CA_CERT = b"/moorage-pki/ca.crt"
PKI_CA_KEY = b"/moorage-pki/ca.key.sealed"
#: A CA rotation in progress (moorage.cluster.ca_rotation): its phase, both CA certificates
#: and both sealed keys; deleted when the rotation finishes.
PKI_CA_ROTATION = b"/moorage-pki/rotation"


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
