"""A webhook receiver can cost a replica neither memory nor a delivery slot for long: the
answer is read up to MAX_ANSWER bytes (then the connection is closed), and
MOORAGE_WEBHOOK_TIMEOUT is a deadline for the whole delivery, not for each read.

The receiver here is a raw socket server on 127.0.0.1 with hostile answers: a 256 MiB body,
or a status line and then one body byte every half second. It counts the body bytes the
client's socket accepted (what the client read, plus at most the kernel's buffers: its
send buffer is made small here, and a receive buffer is at most tcp_rmem's 32 MiB) and sees
when the client hangs up. `post` and the dispatcher run in process against it; the admin
API's `test` and a push's event go through a real replica."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import select
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.replica import Replica

from moorage.cluster import webhook_dispatch as wd
from moorage.cluster import webhook_input as wi
from moorage.cluster import webhooks as wh
from moorage.meta.memory import MemoryMetaStore
from tests.oci import push_image

HUGE = 256 * 1024 * 1024
#: Far more than the client reads (MAX_ANSWER) and every kernel buffer between the two.
READ_BOUND = 40 * 1024 * 1024
TRICKLE_EVERY = 0.5
#: The receiver gives up trickling after this long (a client that never hangs up).
TRICKLE_FOR = 60.0
INFO = wh.RequestInfo("rid", "10.0.0.1:5555", "reg:5000", "PUT", "test", "alice", "")


@dataclass
class Answered:
    """One request the receiver answered: the body bytes the client's socket took, and
    when the client hung up (None: it never did while the receiver went on)."""

    path: str
    began: float
    sent: int = 0
    hung_up: float | None = None


@dataclass
class Receiver:
    server: socket.socket
    answered: list[Answered] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}{path}"

    def mark(self) -> int:
        with self.lock:
            return len(self.answered)

    def at(self, path: str, since: int) -> list[Answered]:
        with self.lock:
            return [a for a in self.answered[since:] if a.path == path]

    def wait_hung_up(
        self, path: str, since: int, count: int = 1, patience: float = 60
    ) -> list[Answered]:
        """The requests to `path` answered after `mark()` was `since`, once `count` of them
        saw the client hang up."""
        deadline = time.monotonic() + patience
        while True:
            answered = self.at(path, since)
            if len([a for a in answered if a.hung_up is not None]) >= count:
                return answered
            assert time.monotonic() < deadline, f"{path}: {answered}"
            time.sleep(0.05)


def _read_request(conn: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return ""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.split(b" ")[1].decode()


def _huge(conn: socket.socket, status: str, seen: Answered) -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {HUGE}\r\n\r\n".encode())
    chunk = b"\0" * 65536
    with contextlib.suppress(OSError):
        while seen.sent < HUGE:
            conn.sendall(chunk)
            seen.sent += len(chunk)
    seen.hung_up = time.monotonic()


def _trickle(conn: socket.socket, seen: Answered, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    try:
        while time.monotonic() - seen.began < TRICKLE_FOR and not stop.is_set():
            readable, _, _ = select.select([conn], [], [], TRICKLE_EVERY)
            if readable and conn.recv(1) == b"":
                seen.hung_up = time.monotonic()
                return
            conn.sendall(b"x")
            seen.sent += 1
    except OSError:
        # A client closing with trickled bytes unread resets the connection (RST, not
        # FIN): a hang-up too (seen once as a flake: the reset went uncounted).
        seen.hung_up = time.monotonic()


def _answer(receiver: Receiver, conn: socket.socket) -> None:
    with conn:
        conn.settimeout(TRICKLE_FOR)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        path = _read_request(conn)
        seen = Answered(path, time.monotonic())
        with receiver.lock:
            receiver.answered.append(seen)
        if path == "/huge":
            _huge(conn, "200 OK", seen)
        elif path == "/huge-500":
            _huge(conn, "500 Internal Server Error", seen)
        elif path == "/trickle":
            _trickle(conn, seen, receiver.stop)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            seen.hung_up = time.monotonic()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = socket.create_server(("127.0.0.1", 0))
    r = Receiver(server)

    def accept() -> None:
        while not r.stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_answer, args=(r, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield r
    finally:
        r.stop.set()
        server.close()


def _hook(url: str) -> Any:
    return wi.new_webhook({"url": url, "events": ["push"]}, "admin")


async def _post(url: str) -> tuple[int | None, str | None]:
    async with httpx.AsyncClient(timeout=wh.TIMEOUT) as client:
        return await wh.post(client, _hook(url), b"{}", "r", 1)


# -- in process --------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "status"), [("/huge", 200), ("/huge-500", 500)])
def test_a_huge_answer_is_read_only_up_to_the_bound(
    receiver: Receiver, path: str, status: int
) -> None:
    since = receiver.mark()
    tracemalloc.start()
    try:
        got = asyncio.run(_post(receiver.url(path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == (status, None if status == 200 else "the receiver answered 500")
    (seen,) = receiver.wait_hung_up(path, since)
    assert seen.sent < READ_BOUND, f"the client read on: {seen.sent} bytes"
    assert peak < 8 * 1024 * 1024, f"{peak} bytes allocated for one delivery"


def test_a_trickled_answer_fails_at_the_total_deadline(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wh, "TIMEOUT", 1.5)
    since = receiver.mark()
    began = time.monotonic()
    status, error = asyncio.run(_post(receiver.url("/trickle")))
    took = time.monotonic() - began
    assert status == 200
    assert error == "its answer (HTTP 200) did not end within 1.5 s (MOORAGE_WEBHOOK_TIMEOUT)"
    assert took < 15, f"{took:.1f} s: the deadline is per read again"
    (seen,) = receiver.wait_hung_up("/trickle", since, patience=10)
    assert seen.sent >= 1  # it did trickle: each read alone came in time


def test_a_small_answer_is_delivered(receiver: Receiver) -> None:
    assert asyncio.run(_post(receiver.url("/small"))) == (200, None)


def test_the_dispatcher_retries_then_fails_a_trickling_receiver(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each attempt ends at the deadline and frees its slot: the event moves to its backoff,
    then, attempts spent, is recorded as failed with the reason."""
    monkeypatch.setattr(wh, "TIMEOUT", 1.0)
    monkeypatch.setattr(wd, "ATTEMPTS", 2)
    since = receiver.mark()

    async def scenario() -> None:
        hooks = wh.Webhooks(MemoryMetaStore(), "abcdefabcdef", "reg:5000")
        record = _hook(receiver.url("/trickle"))
        assert await hooks.store.add(record)
        await hooks.emit(hooks.event("push", "app", INFO))
        dispatcher = wd.Dispatcher(hooks, "w0")
        await dispatcher._fan_out(await hooks.store.hooks())
        loop = wd.HookLoop(dispatcher, record)
        try:
            (q,) = await hooks.store.queued(record.id, 10)
            before = time.time()
            assert await asyncio.wait_for(loop._attempt(q), 30) == "to retry"
            (again,) = await hooks.store.queued(record.id, 10)
            assert again.item.attempts == 1
            assert again.item.last_status == 200
            assert "did not end within 1 s" in str(again.item.last_error)
            assert again.item.next_at >= before + wh.backoff(1)
            assert await asyncio.wait_for(loop._attempt(again), 30) == "failed"
            assert await hooks.store.queued(record.id, 10) == []
            tried, done = await hooks.store.deliveries(record.id)
            assert (tried.state, tried.attempts, tried.status_code) == ("retrying", 1, 200)
            assert (done.delivered, done.attempts, done.status_code) == (False, 2, 200)
            assert "did not end within 1 s" in str(done.error)
        finally:
            await hooks.aclose()

    asyncio.run(scenario())
    assert len(receiver.wait_hung_up("/trickle", since, count=2, patience=10)) == 2


def test_a_dead_receiver_is_tried_one_event_at_a_time_until_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receiver that refuses connections, 40 events queued: after BREAK_AFTER failures in
    a row the loop tries one event at a time, at the backoff of that run of failures, and
    the other events keep their attempts. Each event on its own schedule made ~200 attempts
    here (a scale probe: 10,000 events for a dead receiver slowed the replica 5-15x). Once
    the receiver answers, every event is delivered."""
    monkeypatch.setattr(wh, "TIMEOUT", 2.0)
    monkeypatch.setattr(wh, "BACKOFF", 0.05)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed: nothing listens there
    attempts: list[int] = []
    real_post = wh.post

    async def counted(*args: Any) -> tuple[int | None, str | None]:
        attempts.append(1)
        return await real_post(*args)

    monkeypatch.setattr(wd, "post", counted)
    received: list[bytes] = []

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    async def scenario() -> None:
        hooks = wh.Webhooks(MemoryMetaStore(), "abcdefabcdef", "reg:5000")
        record = _hook(f"http://127.0.0.1:{port}/hook")
        assert await hooks.store.add(record)
        for _ in range(40):
            await hooks.emit(hooks.event("push", "app", INFO))
        dispatcher = wd.Dispatcher(hooks, "w0")
        for _ in range(2):  # a page of the outbox at a time
            await dispatcher._fan_out(await hooks.store.hooks())
        loop = wd.HookLoop(dispatcher, record)
        task = asyncio.create_task(loop.run())
        try:
            await asyncio.sleep(3.0)  # backoffs 0.05, 0.1, ... 1.6 s: about 8 probes
            assert loop.failures >= wd.BREAK_AFTER
            assert len(attempts) <= 20, f"{len(attempts)} attempts for a dead receiver"
            queued = await hooks.store.queued(record.id, 100)
            assert len(queued) == 40  # none given up
            assert sum(q.item.attempts for q in queued) == len(attempts)
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ok)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                loop.down_until = 0.0  # (not to wait out the last backoff here)
                loop.wake.set()
                for _ in range(300):
                    if not await hooks.store.queued(record.id, 1):
                        break
                    await asyncio.sleep(0.05)
                assert await hooks.store.queued(record.id, 1) == []
                assert len(received) == 40
                assert loop.failures == 0
            finally:
                server.shutdown()
                server.server_close()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await hooks.aclose()

    asyncio.run(scenario())


# -- a real replica ------------------------------------------------------------------------
ENV = {
    "MOORAGE_WEBHOOK_TIMEOUT": "2",
    "MOORAGE_WEBHOOK_BACKOFF": "0.3",
    "MOORAGE_WEBHOOK_ATTEMPTS": "2",
    "MOORAGE_WEBHOOK_POLL": "600",
}


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ENV.items():
            mp.setenv(name, value)
        r = Replica(tmp_path_factory.mktemp("webhook-limits") / "data")
        try:
            r.start()
            yield r
        finally:
            r.stop()


def _add(http: httpx.Client, url: str, events: list[str]) -> str:
    resp = http.post("/api/v0/webhooks", json={"url": url, "events": events})
    assert resp.status_code == 200, resp.text
    hook_id: str = resp.json()["webhook"]["id"]
    return hook_id


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_the_test_endpoint_reads_a_huge_answer_only_up_to_the_bound(
    replica: Replica, receiver: Receiver
) -> None:
    since = receiver.mark()
    with replica.client() as http:
        hook_id = _add(http, receiver.url("/huge"), ["push"])
        resp = http.post(f"/api/v0/webhooks/{hook_id}/test", json={})
    assert resp.status_code == 200, resp.text
    delivery = resp.json()["delivery"]
    assert (delivery["delivered"], delivery["status_code"]) == (True, 200)
    (seen,) = receiver.wait_hung_up("/huge", since)
    assert seen.sent < READ_BOUND, f"the replica read on: {seen.sent} bytes"
    rss = {name: _rss_kib(pid) for name, pid in replica.pids().items() if name != "etcd"}
    assert all(kib < 1024 * 1024 for kib in rss.values()), rss


def test_the_test_endpoint_answers_by_the_deadline_of_a_trickling_receiver(
    replica: Replica, receiver: Receiver
) -> None:
    with replica.client() as http:
        hook_id = _add(http, receiver.url("/trickle"), ["push"])
        began = time.monotonic()
        resp = http.post(f"/api/v0/webhooks/{hook_id}/test", json={})
        took = time.monotonic() - began
    assert resp.status_code == 200, resp.text
    delivery = resp.json()["delivery"]
    assert delivery["delivered"] is False
    assert "did not end within 2 s" in delivery["error"]
    assert took < 20, f"{took:.1f} s"


def test_a_push_event_to_a_trickling_receiver_is_retried_then_failed(
    replica: Replica, receiver: Receiver
) -> None:
    repo = "limits/trickled"
    with replica.client() as http:
        hook_id = _add(http, receiver.url("/trickle"), ["push"])
        push_image(replica, repo, "v1", "trickled")
        deadline = time.monotonic() + 60
        while True:
            doc = http.get(f"/api/v0/webhooks/deliveries?webhook={hook_id}").json()
            pushes = [
                d for d in doc["deliveries"] if d["action"] == "push" and d["status"] != "retrying"
            ]
            if pushes:
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.2)
        (hooks,) = [
            h for h in http.get("/api/v0/webhooks").json()["webhooks"] if h["id"] == hook_id
        ]
    (push,) = pushes
    assert (push["delivered"], push["attempts"], push["status_code"]) == (False, 2, 200)
    assert "did not end within 2 s" in push["error"]
    assert hooks["pending"] == 0
