"""Passphrase encryption of backup archives, streamed: AES-256-GCM in 1 MiB chunks.

File layout: MAGIC, 16-byte scrypt salt, 8-byte nonce prefix, then chunks, each the
ciphertext of up to CHUNK bytes plus its 16-byte tag. Chunk i uses nonce prefix || i
(big-endian, 4 bytes); the last chunk is authenticated with the associated data b"last"
and the others with b"more", so a truncated or reordered file does not decrypt.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from moorage.errors import MoorageError

MAGIC = b"MOORAGE-ENC1\n"
CHUNK = 1024 * 1024
TAG = 16


class DecryptionFailed(MoorageError):
    pass


def _key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


def is_encrypted(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class EncryptingWriter(io.RawIOBase):
    """A write-only file object: what is written lands encrypted in `out`."""

    def __init__(self, out: IO[bytes], passphrase: str) -> None:
        salt, self._prefix = os.urandom(16), os.urandom(8)
        self._aead = AESGCM(_key(passphrase, salt))
        self._out = out
        self._buf = bytearray()
        self._counter = 0
        out.write(MAGIC + salt + self._prefix)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buf += data
        while len(self._buf) > CHUNK:  # keep at least one byte for the final chunk
            self._emit(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(data)

    def _emit(self, chunk: bytes, last: bool) -> None:
        nonce = self._prefix + struct.pack(">I", self._counter)
        self._counter += 1
        self._out.write(self._aead.encrypt(nonce, chunk, b"last" if last else b"more"))

    def close(self) -> None:
        if not self.closed:
            self._emit(bytes(self._buf), last=True)
            self._buf.clear()
        super().close()


def decrypt_file(src: Path, dst: Path, passphrase: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if fin.read(len(MAGIC)) != MAGIC:
            raise DecryptionFailed(f"{src} is not an encrypted Moorage backup")
        salt, prefix = fin.read(16), fin.read(8)
        if len(salt) != 16 or len(prefix) != 8:
            raise DecryptionFailed(f"{src} is truncated: it ends within its encryption header")
        aead = AESGCM(_key(passphrase, salt))
        counter = 0
        pending = fin.read(CHUNK + TAG)
        while True:
            following = fin.read(CHUNK + TAG)
            last = not following
            nonce = prefix + struct.pack(">I", counter)
            try:
                fout.write(aead.decrypt(nonce, pending, b"last" if last else b"more"))
            except InvalidTag:
                raise DecryptionFailed(
                    f"{src} does not decrypt: wrong passphrase, or the file is corrupt or truncated"
                ) from None
            if last:
                return
            counter += 1
            pending = following
