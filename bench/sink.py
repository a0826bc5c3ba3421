"""A do-nothing HTTP server to measure the benchmark client's own ceiling.

Run as `python -m bench.sink PORT` (a separate process, like the registries). It reads and
discards request bodies, answers `GET /big?n=BYTES` with BYTES zero bytes, and anything
else with a small manifest-sized body.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

_SMALL = b"x" * 500
_SMALL_REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_SMALL)).encode() + b"\r\n\r\n" + _SMALL
)
_CREATED = b"HTTP/1.1 201 Created\r\nLocation: /sink/blob\r\nContent-Length: 0\r\n\r\n"
_ACCEPTED = b"HTTP/1.1 202 Accepted\r\nLocation: /sink/upload\r\nContent-Length: 0\r\n\r\n"
_ZEROS = bytes(64 << 20)


class _Sink(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.read_buffer = memoryview(bytearray(1 << 20))
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.remaining = 0
        self.reply = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.remaining >= nbytes:
            self.remaining -= nbytes
            if self.remaining == 0:
                self._answer()
            return
        self.buf += self.read_buffer[:nbytes]
        while True:
            if self.remaining:
                take = min(self.remaining, len(self.buf))
                del self.buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self._answer()
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            request_line, *lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            length = 0
            for line in lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            self.reply = self._reply_for(method, target)
            self.remaining = length
            if length == 0:
                self._answer()

    def _reply_for(self, method: str, target: str) -> bytes:
        if method in ("POST", "PATCH"):
            return _ACCEPTED
        if method == "PUT":
            return _CREATED
        if target.startswith("/big?n="):
            n = int(target.partition("=")[2])
            self._big = n
            return b"HTTP/1.1 200 OK\r\nContent-Length: " + str(n).encode() + b"\r\n\r\n"
        if method == "HEAD":
            return _SMALL_REPLY[: -len(_SMALL)]
        return _SMALL_REPLY

    _big = 0

    def _answer(self) -> None:
        assert self.transport is not None
        self.transport.write(self.reply)
        big, self._big = self._big, 0
        view = memoryview(_ZEROS)
        while big > 0:
            step = min(big, len(_ZEROS))
            self.transport.write(view[:step])
            big -= step


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    uvloop.run(_serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
