"""A small HTTP/1.1 client on asyncio protocols: keep-alive, no copies of discarded bodies.

httpx spends more CPU per request than the registries under test do, so the benchmark
speaks HTTP itself. One `Connection` carries one request at a time; concurrency comes
from many connections (one per worker task, see `workloads.run_concurrent`).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 300.0
#: What https:// connections verify the servers with (`python -m bench --tls` sets it).
TLS_CONTEXT: ssl.SSLContext | None = None
READ_BUFFER = 1 << 20

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_EOF = range(7)


class HttpError(Exception):
    """The server answered with a status the workload did not expect, or broke the protocol."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # empty when the caller discarded it
    size: int  # body bytes received, kept or not

    def expect(self, *statuses: int) -> Response:
        if self.status not in statuses:
            detail = self.body[:300].decode(errors="replace")
            raise HttpError(f"expected HTTP {statuses}, got {self.status}: {detail}")
        return self


class _Protocol(asyncio.BufferedProtocol):
    """Reads into one reusable buffer: a discarded body costs no allocation per read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._read_buffer = memoryview(bytearray(READ_BUFFER))
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._keep = True
        self._no_body = False
        self._body = bytearray()
        self._size = 0
        self._status = 0
        self._headers: dict[str, str] = {}
        self._waiter: asyncio.Future[Response] | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._state == _UNTIL_EOF:
                self._finish()
            else:
                self._waiter.set_exception(
                    ConnectionError(f"server closed the connection mid-response ({exc})")
                )

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self._read_buffer[:nbytes]
        if self._state == _LENGTH and nbytes < self._remaining:
            self._remaining -= nbytes
            self._size += nbytes
            if self._keep:
                self._body += data
            return
        self._buf += data
        try:
            self._advance()
        except (ValueError, IndexError) as exc:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(HttpError(f"malformed response: {exc}"))
            if self.transport is not None:
                self.transport.close()

    # parsing

    def _take(self, n: int) -> None:
        take = min(n, len(self._buf))
        if self._keep:
            self._body += self._buf[:take]
        del self._buf[:take]
        self._size += take
        self._remaining -= take

    def _advance(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                self._status = int(head[0].split(" ", 2)[1])
                headers: dict[str, str] = {}
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self._headers = headers
                if 100 <= self._status < 200:
                    continue
                if self._no_body or self._status in (204, 304):
                    self._finish()
                    return
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self._state = _CHUNK_SIZE
                elif "content-length" in headers:
                    self._remaining = int(headers["content-length"])
                    self._state = _LENGTH
                    if self._remaining == 0:
                        self._finish()
                        return
                else:
                    self._state = _UNTIL_EOF
            elif state == _LENGTH:
                self._take(self._remaining)
                if self._remaining:
                    return
                self._finish()
                return
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_DATA:
                self._take(self._remaining)
                if self._remaining:
                    return
                self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._finish()
                    return
            else:  # _UNTIL_EOF
                self._take(len(buf))
                return

    def _finish(self) -> None:
        response = Response(self._status, self._headers, bytes(self._body), self._size)
        self._state = _HEAD
        self._body = bytearray()
        self._size = 0
        if "close" in self._headers.get("connection", "").lower() and self.transport:
            self.transport.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # request side

    async def send(
        self, head: bytes, body: bytes | None, keep_body: bool, no_body: bool
    ) -> Response:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        self._keep = keep_body
        self._no_body = no_body
        if body and len(body) <= 65536:
            self.transport.write(head + body)  # one send for small requests
        else:
            self.transport.write(head)
            if body:
                self.transport.write(body)
        return await waiter


class Connection:
    """One keep-alive connection to `base_url`; reconnects when the server closed it."""

    def __init__(self, base_url: str, authorization: str | None = None) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self._fixed = f"Host: {self.host}:{self.port}\r\nUser-Agent: moorage-bench\r\n"
        if authorization:
            self._fixed += f"Authorization: {authorization}\r\n"
        self._proto: _Protocol | None = None

    async def _protocol(self) -> _Protocol:
        if self._proto is None or self._proto.closed:
            loop = asyncio.get_running_loop()
            if self.tls:
                ctx = TLS_CONTEXT or ssl.create_default_context()
                _transport, proto = await loop.create_connection(
                    _Protocol, self.host, self.port, ssl=ctx, server_hostname=self.host
                )
            else:
                _transport, proto = await loop.create_connection(_Protocol, self.host, self.port)
            self._proto = proto
        return self._proto

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        keep_body: bool = True,
    ) -> Response:
        """Send one request; `target` may be a path or an absolute URL (a `Location`)."""
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1\r\n", self._fixed]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body) if body else 0}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        proto = await self._protocol()
        return await asyncio.wait_for(
            proto.send(head, body, keep_body, method == "HEAD"), REQUEST_TIMEOUT
        )

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
