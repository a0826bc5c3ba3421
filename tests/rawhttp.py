"""A raw HTTP/1.1 client for hostile-input tests: sends exactly the bytes it is given.

httpx and urllib normalize what they send (they drop or encode control characters, resolve
`..`, refuse odd methods), so the tests that must send such requests use a socket.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from harness.process import AUTH

BASIC = b"Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode())


class NoAnswer(Exception):
    """The server did not answer within the timeout (a hang)."""


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        return found[-1] if found else None

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def parse_response(raw: bytes) -> RawResponse:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"incomplete response: {raw[:200]!r}")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
    response = RawResponse(status, headers)
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        body = _dechunk(body)
    else:
        length = response.header("content-length")
        if length is not None:
            body = body[: int(length)]
    response.body = body
    return response


def request(
    port: int,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    *,
    auth: bool = True,
    timeout: float = 30.0,
    half_close: bool = False,
    reset: bool = False,
    source: str | None = None,
) -> RawResponse | None:
    """Send one request on its own connection (`Connection: close`) and read the answer.

    `half_close` shuts the sending side after the bytes (a body cut short); `reset` closes
    the connection with an RST instead of reading the answer (returns None). Raises NoAnswer
    when nothing complete comes back within `timeout` seconds. `source` is the local
    address to send from (another loopback address: the server limits failed logins per
    client address).
    """
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if auth:
        lines.append(b"Authorization: " + BASIC)
    lines += [name + b": " + value for name, value in headers or []]
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    deadline = time.monotonic() + timeout
    bind = (source, 0) if source is not None else None
    with socket.create_connection(("127.0.0.1", port), timeout, bind) as sock:
        # The server may answer early and close: then read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        if reset:
            time.sleep(0.2)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return None
        if half_close:
            with contextlib.suppress(OSError):  # the server may have closed already
                sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswer(f"no complete answer in {timeout} s to {data[:200]!r}")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise NoAnswer(f"no complete answer in {timeout} s to {data[:200]!r}") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return parse_response(bytes(received))


# -- a small image to push and pull back ------------------------------------------------------
@dataclass
class Image:
    repo: str
    tag: str
    manifest: bytes
    digest: str
    blobs: dict[str, bytes]


def push_image(c: Any, repo: str, tag: str, layer: bytes) -> Image:
    """Push a config and one layer (monolithic POST) and a manifest under `tag` (httpx)."""
    import hashlib

    def digest_of(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    blobs = {digest_of(config): config, digest_of(layer): layer}
    for digest, data in blobs.items():
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
        assert r.status_code == 201, r.text
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    r = c.put(
        f"/v2/{repo}/manifests/{tag}",
        content=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    return Image(repo, tag, manifest, digest_of(manifest), blobs)


def assert_pulls_back(c: Any, image: Image) -> None:
    """The image answers byte-identical, by tag and by digest, blobs included."""
    for ref in (image.tag, image.digest):
        r = c.get(f"/v2/{image.repo}/manifests/{ref}")
        assert r.status_code == 200, (ref, r.status_code, r.text[:300])
        assert r.content == image.manifest
        assert r.headers["docker-content-digest"] == image.digest
    for digest, data in image.blobs.items():
        r = c.get(f"/v2/{image.repo}/blobs/{digest}")
        assert r.status_code == 200, (digest, r.status_code)
        assert r.content == data
