"""Manifests: validated, stored as blobs, recorded (with tags and referrers) in one transaction."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from moorage.errors import (
    BlobCollecting,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestTooLarge,
    ManifestUnknown,
    StorageUnavailable,
    StoreUnavailable,
)
from moorage.meta.base import LAST_REVISION, MetaStore
from moorage.meta.ops import Guard, Op
from moorage.meta.policies import Policies
from moorage.meta.records import ManifestRecord, TagRecord
from moorage.oci import mediatypes as mt
from moorage.oci.digest import Digest, digest_of, is_digest, parse_digest
from moorage.oci.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from moorage.oci.names import is_valid_tag
from moorage.registry.uploads import link_stored, settle
from moorage.storage.base import BlobStorage
from moorage.storage.journal import Journal

#: Guards and writes for the push's own transaction, given what was pushed, its tags and
#: whether to read afresh (a retry): the push's webhook event (moorage.api.webhooks).
Notice = Callable[
    [ManifestRecord, list[str], bool], Awaitable[tuple[Sequence[Guard], Sequence[Op]]]
]
#: Writes to make in the transaction of a delete the registry decides itself (retention, garbage
#: collection), given the repository, the digest or tag, and who deletes: its webhook event.
DeleteNotice = Callable[[str, str, str, str], Awaitable[Sequence[Op]]]

if TYPE_CHECKING:
    from moorage.meta.tag_cache import TagCache


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    size: int
    body: bytes


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: Digest
    subject: str | None
    media_type: str = ""
    size: int = 0


def _tag(reference: str) -> str:
    if not is_valid_tag(reference):
        raise ManifestInvalid(
            f"invalid tag {reference[:140]!r}: up to 128 of [A-Za-z0-9_.-], not starting "
            "with . or -"
        )
    return reference


_CACHE_BYTES = 64 * 1024 * 1024  # manifest bodies kept in memory, per API process


class Manifests:
    def __init__(
        self,
        storage: BlobStorage,
        meta: MetaStore,
        journal: Journal | None = None,
        tags: TagCache | None = None,
    ) -> None:
        self.storage = storage
        self.tags = tags  # tag -> manifest, cached under an etcd watch (None: read the store)
        self.meta = meta
        self.journal = journal
        self.policies = Policies(meta)
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        #: Set by the replica when it has webhooks (moorage.server.worker).
        self.on_delete: DeleteNotice | None = None

    async def _journal(self, entry: dict[str, Any]) -> None:
        """Durably record a committed change before it is acknowledged (see storage.journal)."""
        if self.journal is not None:
            await self.journal.append({"r": LAST_REVISION.get(), **entry})

    async def _settle_tags(self, repo: str, tags: Sequence[str]) -> None:
        """Once a change that may delete or re-point `tags` is committed: return when no
        replica's tag cache can serve their old values any more (meta/tag_cache.py)."""
        if self.tags is not None:
            await self.tags.settle(repo, tags)

    async def resolve(self, repo: str, reference: str) -> TagRecord:
        """The manifest a tag or digest names in `repo` (ManifestUnknown if none)."""
        if is_digest(reference):
            digest = str(parse_digest(reference))
            record = await self.meta.get_manifest(repo, digest)
            if record is None:
                raise ManifestUnknown(f"manifest {digest} is not in repository {repo}")
            return record.tag_record()
        if not is_valid_tag(reference):
            raise ManifestUnknown(f"manifest {reference[:140]!r} is not in repository {repo}")
        if self.tags is not None:
            tag = await self.tags.get(repo, reference)
        else:
            tag = await self.meta.get_tag(repo, reference)
        if tag is None:
            raise ManifestUnknown(f"manifest {repo}:{reference} is unknown")
        return tag

    async def _body(self, digest: str) -> bytes | None:
        """Manifest bytes by digest: content-addressed, so a cached copy is always right."""
        body = self._bodies.get(digest)
        if body is not None:
            self._bodies.move_to_end(digest)
            return body
        body = await self.storage.read_bytes(digest)
        if body is not None:
            self._remember(digest, body)
        return body

    def _remember(self, digest: str, body: bytes) -> None:
        if len(body) > _CACHE_BYTES // 16 or digest in self._bodies:
            return
        self._bodies[digest] = body
        self._cached_bytes += len(body)
        while self._cached_bytes > _CACHE_BYTES:
            _, old = self._bodies.popitem(last=False)
            self._cached_bytes -= len(old)

    async def get(self, repo: str, reference: str) -> StoredManifest:
        record = await self.resolve(repo, reference)
        body = await self._body(record.digest)
        if body is None:
            raise StorageUnavailable(
                f"manifest {record.digest} is recorded but its bytes are missing from blob "
                "storage; restore blob storage or push the image again"
            )
        return StoredManifest(record.digest, record.media_type, record.size, body)

    async def put(
        self,
        repo: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: Sequence[str] = (),
        notice: Notice | None = None,
    ) -> PushedManifest:
        if len(body) > MAX_MANIFEST_BYTES:
            raise ManifestTooLarge(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        tags = [_tag(t) for t in extra_tags]
        if is_digest(reference):
            expected = parse_digest(reference)
            digest = digest_of(body, expected.algorithm)
            if digest != expected:
                raise DigestInvalid(f"manifest digest is {digest}, not {expected} as the URL says")
        else:
            tags.insert(0, _tag(reference))
            digest = digest_of(body)
        manifest = parse_manifest(body, content_type)
        # Stored before it is recorded; whether a collection is deleting these bytes is told
        # by the record's own transaction (guarded by their tombstone), not by a read first.
        await self.storage.put_bytes(str(digest), body)
        self._remember(str(digest), body)
        record = ManifestRecord(
            digest=str(digest),
            media_type=manifest.media_type,
            size=len(body),
            subject=manifest.subject.digest if manifest.subject else None,
            artifact_type=manifest.referrer_artifact_type(),
        )
        referrer = _referrer_descriptor(record, manifest) if manifest.subject else None
        unique_tags = list(dict.fromkeys(tags))
        also: list[Op] = []  # the event's writes: filled in by `check`, on every attempt
        sparse = (await self.policies.applicable(repo, fresh=False)).allow_sparse
        blobs, children = ([], []) if sparse else _requirements(manifest)
        checks = 0

        async def check() -> list[Guard]:
            # Immutable tags and the quota (meta/policies.py), and the webhooks the event
            # goes to; the first from what was last read, a retry reads afresh. put_manifest
            # takes `also` after calling this, so a retry writes the event it decided.
            nonlocal checks
            checks += 1
            guards = await self.policies.push_guards(
                repo, str(digest), unique_tags, len(body), fresh=checks > 1
            )
            if notice is not None:
                event_guards, also[:] = await notice(record, unique_tags, checks > 1)
                guards += event_guards
            return guards

        async def record_it() -> list[str]:
            # A link is not proof of bytes: a recovery (emergency repair, restore) can bring
            # back links whose bytes a collection deleted (its link deletes are not
            # journaled). So the bytes are checked first, then one transaction checks the
            # links, the policies and records the manifest. A collection deletes a link
            # before its bytes, under a tombstone that transaction is guarded against, so
            # bytes seen here are not deleted before it commits.
            found = {d: await self.storage.stat(d) for d in dict.fromkeys(blobs)}
            gone = [d for d, size in found.items() if size is None]
            _check_sizes(manifest, found)
            if manifest.children:  # an index: its children's sizes are in their records
                _check_sizes(manifest, await self.meta.manifest_sizes(repo, children))
            if gone:
                await check()  # a push the policies refuse says so first (403 over 400)
                return gone
            return await self.meta.put_manifest(
                repo, record, unique_tags, referrer, blobs, children, check, also
            )

        try:
            missing = await record_it()
        except BlobCollecting:  # its tombstone refused the transaction: wait, store again
            await settle(self.meta, str(digest))
            await self.storage.put_bytes(str(digest), body)
            missing = await record_it()
        if missing and not sparse and (await self.policies.applicable(repo)).allow_sparse:
            # refused on the policies as last read here: sparse content is allowed now
            blobs, children = [], []
            missing = await record_it()
        config = manifest.config
        if config is not None and config.digest == mt.EMPTY_JSON_DIGEST in missing:
            # The empty JSON config of artifacts: create it rather than fail the push.
            await settle(self.meta, mt.EMPTY_JSON_DIGEST)
            await self.storage.put_bytes(mt.EMPTY_JSON_DIGEST, mt.EMPTY_JSON)
            await link_stored(
                self.meta, repo, parse_digest(mt.EMPTY_JSON_DIGEST), len(mt.EMPTY_JSON)
            )
            missing = await record_it()
        if missing:
            what = "manifests" if manifest.is_index else "blobs"
            kind = "index" if manifest.is_index else "manifest"
            raise ManifestBlobUnknown(
                f"the {kind} refers to {what} not in {repo}: {', '.join(missing[:10])}; "
                "push them first",
                detail={"missing": missing},
            )
        if await self.storage.stat(str(digest)) is None:
            # A collection tombstoned, deleted and released these bytes between their store
            # and the commit (its tombstone was gone by then). Recorded now, they are safe
            # from any later collection (it rescues what a record written after its mark
            # names): stored again before the answer.
            await self.storage.put_bytes(str(digest), body)
        await self._journal(
            {
                "op": "manifest",
                "repo": repo,
                "record": asdict(record),
                "tags": unique_tags,
                "referrer": referrer,
            }
        )
        await self._settle_tags(repo, unique_tags)  # a re-pointed tag is served by none
        return PushedManifest(digest, record.subject, record.media_type, record.size)

    async def delete(self, repo: str, reference: str, also: Sequence[Op] = ()) -> None:
        """Delete a manifest (by digest) or a tag; `also`: writes made in the delete's own
        transaction (its webhook event)."""
        if is_digest(reference):
            digest = str(parse_digest(reference))

            deleted: list[str] = []

            async def check(tags: list[str]) -> list[Guard]:  # no immutable tag points at it
                deleted[:] = tags
                return await self.policies.delete_guards(repo, f"manifest {digest}", tags)

            if not await self.meta.delete_manifest(repo, digest, check, also):
                raise ManifestUnknown(f"manifest {digest} is not in repository {repo}")
            await self._journal({"op": "delete", "repo": repo, "digest": digest})
            await self._settle_tags(repo, deleted)
            return
        if not is_valid_tag(reference) or not await self.untag(repo, reference, also=also):
            raise ManifestUnknown(f"tag {reference[:140]!r} is not in repository {repo}")

    async def untag(
        self, repo: str, tag: str, revision: int | None = None, also: Sequence[Op] = ()
    ) -> bool:
        """Delete a tag unless it is immutable (TagImmutable); with `revision`, only while it
        is still the tag read at that revision (retention). False when there is none."""
        for _ in range(20):
            guards = await self.policies.delete_guards(repo, tag, [tag])
            if await self.meta.delete_tag(repo, tag, guards, revision, also):
                await self._journal({"op": "untag", "repo": repo, "tag": tag})
                await self._settle_tags(repo, [tag])
                return True
            if revision is not None or await self.meta.get_tag(repo, tag) is None:
                return False
            # a policy of the repository changed meanwhile: check it again
        raise StoreUnavailable("the tag delete kept colliding with policy changes; retry")


def _check_sizes(manifest: Manifest, found: dict[str, int | None]) -> None:
    """ManifestInvalid when a descriptor's size is not its blob's or its child manifest's (a
    client pulling the image would fail on it); `found`: the sizes known (None: absent)."""
    described = [manifest.config] if manifest.config is not None else []
    for d in [*described, *manifest.layers, *manifest.children]:
        size = found.get(d.digest)
        if size is not None and size != d.size:
            what = "manifest" if d in manifest.children else "blob"
            raise ManifestInvalid(
                f"the manifest says {what} {d.digest} is {d.size} bytes; it is {size}: fix the "
                "descriptor's size",
                detail={"digest": d.digest, "size": d.size, "stored": size},
            )


def _requirements(manifest: Manifest) -> tuple[list[str], list[str]]:
    """What must be in the repository: an index's child manifests; a manifest's config and
    distributable layers. The subject is never checked (a referrer may come first)."""
    if manifest.is_index:
        return [], [c.digest for c in manifest.children]
    blobs = [
        layer.digest for layer in manifest.layers if not mt.is_non_distributable(layer.media_type)
    ]
    if manifest.config is not None:
        blobs.insert(0, manifest.config.digest)
    return blobs, []


def _referrer_descriptor(record: ManifestRecord, manifest: Manifest) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "mediaType": record.media_type,
        "digest": record.digest,
        "size": record.size,
    }
    if record.artifact_type:
        descriptor["artifactType"] = record.artifact_type
    if manifest.annotations:
        descriptor["annotations"] = manifest.annotations
    return descriptor
