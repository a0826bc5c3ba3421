"""The backup archive format: one tar file, consistent (one etcd revision), checksummed.

Layout of the archive, in this order:

    backup.json      header: version, cluster id, epoch, revision, created_at, counts,
                     which blobs the archive holds (`blobs_in_archive`, every digest it
                     holds; `manifests_in_archive`, those that are manifests), the base
                     archive of an incremental one
    metadata.json    every registry record as of `revision`, as typed records (see
                     moorage.meta.snapshot: repositories, tags, manifest records, blob
                     links, referrers, the accounts: users with their password hashes,
                     organizations, teams, memberships, grants, public repositories,
                     access tokens and robots' tokens with the SHA-256 of their secrets;
                     the cluster record and replica records):
                     `{"records": [{"kind": ...}, ...]}`. Never a secret: no token signing
                     key, no CA key (outside the records a snapshot reads)
    blobs/<alg>/<hex>  manifest bytes (always) and layer/config blobs (--include-blobs);
                     content-addressed, so each name is its own checksum
    SHA256SUMS       sha256 of every member above

Format 3 added access token records; format 2 is the same without them (read as is: its
cluster's tokens are not in it). Format 1 (written until format 2) held the store's keys
and values instead (`{"kvs": [[key, value], ...]}`) and no `manifests_in_archive`: it is
still read, its keys turned into the same typed records (moorage.meta.snapshot.from_kv).

Counting: "blobs" are layer and config blobs, manifests are counted separately, in the
header's counts, in `backup`, `backup inspect` and `restore` alike.

Reading an archive trusts nothing in it: SHA256SUMS is no signature, so whoever can write
an unencrypted archive can change any member and its checksum. Member names, member types
and sizes, the header's fields, base archive names and every record are validated; a blob
counts as held only if a member of the archive (or of a base archive) actually holds it.
Archives are read as uncompressed tars (never decompressed) and records with bounded reads.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moorage.errors import DigestInvalid, MoorageError
from moorage.meta.records import check_digest
from moorage.oci.digest import parse_digest
from moorage.recovery.crypt import decrypt_file, is_encrypted

FORMAT_VERSION = 3
#: Every format this code reads (1: the store's keys and values in metadata.json; 2: typed
#: records; 3: typed records with access tokens, which code of format 2 does not know).
READABLE_VERSIONS = (1, 2, 3)
RECORD_MEMBERS = ("backup.json", "metadata.json", "SHA256SUMS")
CHUNK = 1024 * 1024


def _limit(env: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(env, default)))
    except ValueError:
        return default


def record_limits() -> dict[str, tuple[int, str]]:
    """Largest size read of each record member, and the variable that raises it."""
    return {
        "backup.json": (
            _limit("MOORAGE_BACKUP_MAX_HEADER_BYTES", 256 * 1024 * 1024),
            "MOORAGE_BACKUP_MAX_HEADER_BYTES",
        ),
        "metadata.json": (
            _limit("MOORAGE_BACKUP_MAX_METADATA_BYTES", 1024 * 1024 * 1024),
            "MOORAGE_BACKUP_MAX_METADATA_BYTES",
        ),
        "SHA256SUMS": (
            _limit("MOORAGE_BACKUP_MAX_SUMS_BYTES", 256 * 1024 * 1024),
            "MOORAGE_BACKUP_MAX_SUMS_BYTES",
        ),
    }


class BackupError(MoorageError):
    pass


def blob_member(digest: str) -> str:
    """The member name of a blob (DigestInvalid for anything but a valid digest)."""
    d = parse_digest(digest)
    return f"blobs/{d.algorithm}/{d.encoded}"


def member_digest(name: str) -> str | None:
    """The digest a member name `blobs/<alg>/<hex>` stands for, None if it is not one."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return None
    digest = f"{parts[1]}:{parts[2]}"
    try:
        parse_digest(digest)
    except DigestInvalid:
        return None
    return digest


def safe_archive_name(name: object) -> bool:
    """A base archive name is a plain file name next to the archive: no path at all."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
        and name.isprintable()
    )


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def regular(info: tarfile.TarInfo) -> bool:
    return info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not info.issparse()


#: The largest extended header (a GNU long name or link, a pax header) read: tarfile reads
#: one whole into memory, whatever size it declares. Moorage writes none over a few hundred
#: bytes.
MAX_EXTENDED_HEADER = 1024 * 1024
_EXTENDED = frozenset(
    {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
     tarfile.SOLARIS_XHDTYPE}
)  # fmt: skip


class _BoundedTarInfo(tarfile.TarInfo):
    """A member header whose extended header, if any, is refused past MAX_EXTENDED_HEADER."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.ReadError(
                f"an extended tar header of {self.size} bytes (at most {MAX_EXTENDED_HEADER})"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]


def open_tar(path: Path) -> tarfile.TarFile:
    """An uncompressed tar (mode "r:": a compressed archive is never decompressed)."""
    try:
        return tarfile.open(path, "r:", tarinfo=_BoundedTarInfo)
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        raise BackupError(
            f"{path} is not a readable Moorage backup (an uncompressed tar archive): {exc}"
        ) from None


def appended(path: Path, end: int) -> str | None:
    """What follows the end of a tar archive (`end`: where its end-of-archive blocks start)
    when it is not the zeros a tar writer pads with: bytes added after it was written."""
    with open(path, "rb") as fh:
        fh.seek(end)
        offset = end
        while chunk := fh.read(1 << 20):
            if chunk.strip(b"\0"):
                at = offset + len(chunk) - len(chunk.lstrip(b"\0"))
                return f"bytes follow the end of the archive (from offset {at}): it was changed"
            offset += len(chunk)
    return None


def _read_record(tar: tarfile.TarFile, info: tarfile.TarInfo, where: Path) -> bytes:
    """A record member, read whole but never beyond its limit."""
    limit, env = record_limits()[info.name]
    if not regular(info):
        raise BackupError(f"{where}: {info.name} is not a regular file: not a Moorage backup")
    if info.size > limit:
        raise BackupError(
            f"{where}: {info.name} is {info.size} bytes, more than the {limit} this command "
            f"reads; if the archive is trusted, raise {env}"
        )
    f = tar.extractfile(info)
    if f is None:
        raise BackupError(f"{where}: {info.name} cannot be read")
    data = f.read(limit + 1)
    if len(data) > limit:
        raise BackupError(f"{where}: {info.name} is larger than {limit} bytes")
    return data


def _find_record(tar: tarfile.TarFile, name: str, where: Path) -> bytes | None:
    for info in tar:
        if info.name == name:
            return _read_record(tar, info, where)
    return None


def _json(data: bytes, what: str, where: Path) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BackupError(f"{where}: {what} is not valid JSON: not a Moorage backup") from None


# -- the header -----------------------------------------------------------------------


#: A cluster id as replicas make them (hex), or as older versions did (letters, digits).
_CLUSTER_ID = re.compile(r"[0-9A-Za-z]{1,64}")
#: Incremental backups one chain may hold.
MAX_CHAIN = 1000


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def check_header(header: object, where: Path) -> dict[str, Any]:
    """The header's fields, each checked; BackupError listing every invalid one."""
    if not isinstance(header, dict):
        raise BackupError(f"{where}: backup.json is not a JSON object: not a Moorage backup")
    if header.get("version") not in READABLE_VERSIONS:
        raise BackupError(
            f"{where} has backup format {show(header.get('version'))}, expected one of "
            + ", ".join(map(str, READABLE_VERSIONS))
        )
    problems: list[str] = []
    expected: dict[str, tuple[type | tuple[type, ...], str]] = {
        "cluster_id": (str, "a string"),
        "epoch": (int, "an integer"),
        "revision": (int, "an integer"),
        "created_at": ((int, float), "a number"),
        "include_blobs": (bool, "true or false"),
        "counts": (dict, "an object"),
        "blobs_in_archive": (list, "a list"),
        "chain_blobs": (list, "a list"),
        "base_chain": (list, "a list"),
    }
    if header["version"] >= 2:
        expected["manifests_in_archive"] = (list, "a list")
    header.setdefault("chain_blobs", [])
    header.setdefault("base_chain", [])
    header.setdefault("base", None)
    header.setdefault("manifests_in_archive", None)  # format 1: not recorded
    for name, (typ, what) in expected.items():
        value = header.get(name)
        if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
            problems.append(f"backup.json: {name} is not {what}")
    for name in ("epoch", "revision"):
        value = header.get(name)
        if isinstance(value, int) and not 0 <= value < 2**63:
            problems.append(f"backup.json: {name} {show(value)} is out of range")
    created = header.get("created_at")
    if isinstance(created, int | float) and not (
        math.isfinite(created) and 0 <= created < 253402300800  # before year 10000
    ):
        problems.append(f"backup.json: created_at {show(created)} is not a time")
    counts = header.get("counts")
    if isinstance(counts, dict) and not all(
        isinstance(k, str) and k.isascii() and k.isprintable() and _count(v)
        for k, v in counts.items()
    ):
        problems.append("backup.json: counts holds a name or number that is not one")
    cluster_id = header.get("cluster_id")
    if isinstance(cluster_id, str) and not _CLUSTER_ID.fullmatch(cluster_id):
        problems.append(f"backup.json: invalid cluster id {show(cluster_id)}")
    for name in ("blobs_in_archive", "chain_blobs", "manifests_in_archive"):
        for value in header.get(name) or () if isinstance(header.get(name), list) else ():
            try:
                check_digest(value, "backup header")
            except MoorageError:
                problems.append(f"backup.json: {name} lists an invalid digest {show(value)}")
    chain = header.get("base_chain") if isinstance(header.get("base_chain"), list) else []
    base = header.get("base")
    for name in [*([base] if base is not None else []), *(chain or [])]:
        if not safe_archive_name(name):
            problems.append(
                f"backup.json: base archive name {show(name)} is not a plain file name "
                "(no path): refused"
            )
    if base is not None and chain and chain[0] != base:
        problems.append("backup.json: base is not the first archive of base_chain")
    if chain and (len(set(chain)) != len(chain) or where.name in chain):
        problems.append("backup.json: base_chain names an archive twice, or this one")
    if chain and len(chain) > MAX_CHAIN:
        problems.append(f"backup.json: base_chain is longer than {MAX_CHAIN} archives")
    if problems:
        raise BackupError(
            f"{where} has an invalid header (backup.json); refused:\n  " + "\n  ".join(problems)
        )
    return header


def read_json_member(path: Path, name: str) -> Any:
    """The JSON record `name` of the archive at `path` (bounded, validated member)."""
    try:
        with open_tar(path) as tar:
            data = _find_record(tar, name, path)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{path} is not a readable Moorage backup: {exc}") from None
    if data is None:
        raise BackupError(f"{path} has no {name}: not a Moorage backup")
    return _json(data, name, path)


def read_header(path: Path) -> dict[str, Any]:
    return check_header(read_json_member(path, "backup.json"), path)


def add_bytes(tar: tarfile.TarFile, name: str, payload: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(payload))


def plaintext(path: Path, passphrase: str | None, stack: contextlib.ExitStack) -> Path:
    """The archive itself, or a decrypted copy in a temporary directory (removed with
    `stack`) when it is encrypted."""
    if not is_encrypted(path):
        return path
    if not passphrase:
        raise BackupError(
            f"{path} is encrypted: give its passphrase (--passphrase-file or "
            "MOORAGE_BACKUP_PASSPHRASE)"
        )
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moorage-backup-")))
    out = tmp / path.name
    decrypt_file(path, out, passphrase)
    return out


def archive_digests(path: Path) -> set[str]:
    """The blobs an archive actually holds: its regular `blobs/<alg>/<hex>` members (names
    only; `verify` checks their content)."""
    try:
        with open_tar(path) as tar:
            return {
                d
                for info in tar.getmembers()
                if regular(info) and (d := member_digest(info.name)) is not None
            }
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{path} is not a readable Moorage backup: {exc}") from None


class ArchiveBlobs:
    """Blobs of an archive chain, read through one open handle per archive and an index of
    its members (opening and scanning a tar per blob would be quadratic). Only regular
    members named `blobs/<alg>/<valid hex>` count."""

    def __init__(
        self, archives: list[Path], indexes: list[dict[str, tarfile.TarInfo]] | None = None
    ) -> None:
        """`indexes` (digest -> member, one per archive, as `_scan` found them) spares
        reading every member header again."""
        self._tars: list[tarfile.TarFile] = []
        self._members: dict[str, tuple[tarfile.TarFile, tarfile.TarInfo]] = {}
        try:
            for i, archive in enumerate(archives):
                tar = open_tar(archive)
                self._tars.append(tar)
                if indexes is not None:
                    for known, info in indexes[i].items():
                        self._members.setdefault(known, (tar, info))
                    continue
                for info in tar.getmembers():
                    found = member_digest(info.name)
                    if found is not None and regular(info):
                        self._members.setdefault(found, (tar, info))
        except (OSError, tarfile.TarError, EOFError) as exc:
            self.close()
            raise BackupError(f"a backup archive cannot be read: {exc}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for tar in self._tars:
            tar.close()
        self._tars = []

    def __enter__(self) -> ArchiveBlobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def digests(self) -> set[str]:
        return set(self._members)

    def size(self, digest: str) -> int | None:
        found = self._members.get(digest)
        return found[1].size if found else None

    def copy(self, digest: str, write: Callable[[bytes], object]) -> bool:
        """Stream a blob out of the first archive of the chain that holds it."""
        found = self._members.get(digest)
        if found is None:
            return False
        tar, info = found
        member = tar.extractfile(info)
        if member is None:
            return False
        while chunk := member.read(CHUNK):
            write(chunk)
        return True
