"""Admin API for the cluster: status, the steps of a join, remove, the storage probe."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moorage.api import auditing
from moorage.api import join_tokens as join_api
from moorage.api.errors import admin_error
from moorage.api.http import authorization
from moorage.api.state import AppState
from moorage.cluster import join_tokens, membership
from moorage.cluster.tls import ClusterCaUnavailable, replica_hosts, sign_join
from moorage.errors import Denied, LoginThrottled, MoorageError, Unauthorized
from moorage.meta.etcd import EtcdCluster, data_revision
from moorage.meta.snapshot import to_json
from moorage.storage.control import leave_probe, open_control

Handler = Callable[[Request, AppState, EtcdCluster, dict[str, Any]], Awaitable[Any]]


class _JSONResponse(JSONResponse):
    """JSON in ASCII: a string from the request may hold a lone surrogate (`"\\ud800"`),
    which has no UTF-8 form (Starlette's JSONResponse failed on it with a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return _JSONResponse(admin_error(code, message), status_code=status)


def admin(handler: Handler, joiner: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Admin credentials (or, where `joiner`, a join token: api.join_tokens), a JSON body,
    and errors as `{"error", "code"}` documents."""

    async def endpoint(request: Request) -> Response:
        st: AppState = request.app.state.moorage
        header = authorization(request)
        if joiner and join_api.presents_token(header):
            assert header is not None
            grant = await join_api.authorize(request, st, header)
            if isinstance(grant, Response):
                return grant
            request.state.join_grant = grant
        else:
            refused = await _admin_identity(request, st)
            if refused is not None:
                return refused
        if st.cluster is None:
            return _error(501, "UNSUPPORTED", "this replica has no etcd cluster")
        body: dict[str, Any] = {}
        if request.method == "POST":
            try:
                raw = await _read_body(request)
            except ClientDisconnect:
                return _error(400, "INVALID", "the request body ended early")
            if raw is None:
                return _error(413, "TOO_LARGE", f"the request body exceeds {MAX_BODY} bytes")
            try:
                body = json.loads(raw) if raw else {}
            except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deeply
                return _error(400, "INVALID", "the request body is not JSON")
            if not isinstance(body, dict):
                return _error(400, "INVALID", "the request body must be a JSON object")
        # A fenced replica's view of the cluster is stale and its writes are lost: refuse
        # before and after (a change made meanwhile is not acknowledged).
        if refused := _fenced(st):
            return refused
        try:
            result = await handler(request, st, st.cluster, body)
        except (Unauthorized, Denied) as exc:  # a join token's refusals
            return join_api.refusal(exc)
        except (membership.Refused, join_tokens.TooManyTokens) as exc:
            return _error(409, "REFUSED", str(exc))
        except membership.Busy as exc:
            return _error(423, "BUSY", str(exc))
        except (UnknownMember, join_api.NoSuchToken) as exc:
            return _error(404, "NOT_FOUND", str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, "INVALID", f"bad request: {exc}")
        except MoorageError as exc:
            return _error(503, "UNAVAILABLE", str(exc))
        return _fenced(st) or _JSONResponse(result)

    return endpoint


async def _admin_identity(request: Request, st: AppState) -> Response | None:
    """None when the request carries an admin's credentials, else the refusal."""
    try:
        client = request.client.host if request.client else None
        identity = await st.auth.authenticate(authorization(request), client)
    except LoginThrottled as exc:
        resp = _error(429, "TOOMANYREQUESTS", str(exc))
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    except MoorageError as exc:  # the store cannot look the user up
        resp = _error(503, "UNAVAILABLE", str(exc))
        resp.headers["Retry-After"] = "5"
        return resp
    if identity is None or identity.anonymous:
        resp = _error(401, "UNAUTHORIZED", "admin credentials required")
        resp.headers["WWW-Authenticate"] = st.auth.challenge
        return resp
    if not identity.admin or identity.limit is not None:
        return _error(403, "DENIED", "a cluster admin's credentials are required")
    request.state.admin_name = identity.name
    request.state.principal = identity
    return None


MAX_BODY = 64 * 1024  # the admin API's requests are a few hundred bytes


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None when it is larger than MAX_BODY."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


def _fenced(st: AppState) -> JSONResponse | None:
    why = st.write_refusal()
    return None if why is None else _error(503, "UNAVAILABLE", f"fenced: {why}")


async def status(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    if (grant := join_api.grant_of(request)) is not None:
        grant.require_claim()  # a joiner waits for its own heartbeat
    return await membership.cluster_status(store, st.config)


_REPLICA_ID = re.compile(r"[0-9a-f]{12}")


def _peer_url(value: object) -> tuple[str, str]:
    """An etcd peer URL, https://HOST:PORT (etcd's peers speak mutual TLS only), and its
    host; or ValueError (a 400) saying what is wrong."""
    url = str(value)
    parsed = urllib.parse.urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "https" or not parsed.hostname or port is None:
        raise ValueError(f"peer_url must look like https://HOST:PORT, not {url[:100]!r}")
    return url, parsed.hostname


def _http_host(value: object) -> str:
    """The host of the joiner's HTTP address HOST:PORT (its certificate names it)."""
    addr = str(value)
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or len(addr) > 300:
        raise ValueError(f"http_addr must look like HOST:PORT, not {addr[:100]!r}")
    return host.strip("[]") or "127.0.0.1"


async def join(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    """Sign the joiner's CSR for the hosts of this request's own addresses (refused before
    anything changes if it asks for other names), then add its etcd member as a learner."""
    replica_id = str(body["replica_id"])
    if not _REPLICA_ID.fullmatch(replica_id):
        raise ValueError(f"replica_id must be 12 hex digits, not {replica_id[:40]!r}")
    peer_url, etcd_host = _peer_url(body["peer_url"])
    hosts = replica_hosts(_http_host(body["http_addr"]), etcd_host)
    grant = join_api.grant_of(request)
    if grant is not None and body.get("unsafe"):
        raise Denied("--unsafe-join needs the admin credentials, not a join token")
    try:
        tls = await sign_join(store, st.config, replica_id, body["csr"], hosts)
    except ClusterCaUnavailable as exc:
        raise MoorageError(f"cannot sign the new replica's certificate: {exc}") from None
    if grant is not None:  # signed: the request is good; now the token is used up
        await join_tokens.claim(store, grant, replica_id, peer_url)
    answer = await membership.begin_join(
        store,
        st.config,
        replica_id=replica_id,
        peer_url=peer_url,
        unsafe=bool(body.get("unsafe", False)),
    )
    detail = {"peer_url": peer_url, "http_addr": str(body["http_addr"])[:300]}
    if body.get("unsafe"):
        detail["unsafe"] = "true"
    who = f"join-token:{grant.digest[:12]}" if grant is not None else None
    await auditing.record(request, st, "join", f"replica:{replica_id}", detail, actor=who)
    return {**answer, **tls}


_MEMBER_ID = re.compile(r"[0-9a-fA-F]{1,16}")  # etcd member ids are 64 bits


class UnknownMember(LookupError):
    """The request names an etcd member that does not exist (a 404)."""


async def promote(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    raw_id = str(body["member_id"])
    if not _MEMBER_ID.fullmatch(raw_id):
        raise ValueError(f"member_id must be up to 16 hex digits, not {raw_id[:40]!r}")
    member_id = int(raw_id, 16)
    # Checked first: etcd's refusal for an unknown member would be retried for minutes.
    member = next((m for m in await store.members() if m.id == member_id), None)
    if member is None:
        raise UnknownMember(f"no etcd member {str(body['member_id'])[:40]!r} in this cluster")
    grant = join_api.grant_of(request)
    if grant is not None and grant.require_claim().peer_url not in member.peer_urls:
        raise Denied("a join token promotes only the member its own join added")
    if member.is_learner:  # a voter already: a retried promote whose answer was lost
        await membership.promote(store, member_id)
    return {"promoted": body["member_id"]}


async def join_end(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    grant = join_api.grant_of(request)
    if grant is not None and grant.require_claim().replica_id != str(body["replica_id"]):
        raise Denied("a join token ends only its own join")
    # (a token's claim stays until its lease ends: a reuse is told whose join used it)
    await membership.end_join(store, str(body["replica_id"]))
    return {"released": True}


async def remove(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    ids = body["replica_ids"]
    if not isinstance(ids, list) or not ids:
        raise ValueError("replica_ids must be a non-empty list")
    doc = await membership.remove(
        store,
        st.config,
        [str(i) for i in ids],
        bool(body.get("force")),
        dry_run=bool(body.get("dry_run")),
    )
    if not body.get("dry_run"):
        detail = {"force": "true"} if body.get("force") else {}
        for rid in [str(i)[:64] for i in ids[:64]]:
            await auditing.record(request, st, "remove", f"replica:{rid}", detail)
    return doc


async def storage_probe(
    request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]
) -> Any:
    """Write a file into blob storage; a joining replica must find it in its own path (on
    S3: an object it must read through its own endpoint and credentials)."""
    control = open_control(st.config.storage)
    try:
        name, content = await leave_probe(control)  # (and purges probes nobody read)
    finally:
        await control.aclose()
    return {"path": name, "content": content, "storage": st.config.storage}


async def local_revision(
    request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]
) -> Any:
    """The newest registry-data revision in this replica's own copy (for emergency repair)."""
    return {
        "replica_id": st.config.replica_id,
        "data_dir": st.config.data_dir,
        "revision": await data_revision(st.config.etcd_client_url, tls=store.tls),
    }


async def backup_metadata(
    request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]
) -> Any:
    """The registry and cluster records as of one etcd revision (online, without pausing
    pushes), as typed records (moorage.meta.snapshot; internal to Moorage: `moorage backup`
    reads it), and one line per record left out because it is invalid.

    Paged (`?paged=1`, then `&revision=R&after=C` from the answer's `revision` and `next`
    until `next` is null): one bounded read of etcd per request, all at revision R. An
    unpaged request (a `moorage backup` older than paging) gets everything only when it
    fits in one page; otherwise a 400 that says to upgrade, never a partial answer."""
    q = request.query_params
    paged = q.get("paged") == "1"
    revision = _whole(q.get("revision", "0"), "revision")
    after = _cursor(q["after"]) if "after" in q else None
    snapshot, invalid, following = await store.snapshot_page(revision, after)
    if following is not None and not paged:
        raise ValueError(
            "the cluster has more records than one answer holds: this moorage backup "
            "predates paged backups; run the moorage command of the replicas' version"
        )
    cluster = await store.get_cluster()
    if after is None:
        # A backup is recorded when the records leave the cluster (the archive is written
        # by the command, on its own host, which may not reach etcd).
        detail = {"revision": str(snapshot.revision)}
        await auditing.record(request, st, "backup", f"cluster:{st.config.cluster_id}", detail)
    doc = {
        "cluster_id": st.config.cluster_id,
        "epoch": cluster.epoch if cluster else st.config.epoch,
        "revision": snapshot.revision,
        "records": [to_json(e) for e in snapshot.entries],
        "invalid": invalid,
    }
    if paged:
        doc["next"] = _encode_cursor(following) if following is not None else None
    return doc


def _whole(raw: str, what: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ValueError(f"{what} must be a whole number")
    return int(raw)


def _encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def _cursor(raw: str) -> bytes:
    """The key a `next` names (base64url); ValueError for anything else."""
    if len(raw) > 8192 or not raw.isascii():
        raise ValueError("after is not a cursor of this endpoint")
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except ValueError:
        raise ValueError("after is not a cursor of this endpoint") from None
    return key  # ValueError from the store for a key outside it


async def backup_written(
    request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]
) -> Any:
    """`moorage backup` says its archive of (epoch, revision) is written whole: the journal
    may be trimmed up to it (moorage.cluster.journal_trim). The audit log keeps it as
    `backup.written` with what the command says of the archive (size, file name, whether
    it holds blobs, whether it is incremental), for the web UI's Backups page."""
    epoch, revision = body.get("epoch"), body.get("revision")
    if not (_positive(epoch) and _positive(revision)):
        raise ValueError("epoch and revision must be positive integers")
    assert isinstance(epoch, int)
    assert isinstance(revision, int)
    if body.get("cluster_id") != st.config.cluster_id:
        raise ValueError(f"the backup is not of this cluster ({st.config.cluster_id})")
    cluster = await store.get_cluster()
    if (cluster is not None and epoch > cluster.epoch) or revision > await store.revision():
        raise ValueError("the backup's epoch or revision is newer than the cluster's")
    newest = await store.record_backup(epoch, revision)
    detail = {"epoch": str(epoch), "revision": str(revision)}
    for name in ("size", "file", "include_blobs", "incremental"):
        value = body.get(name)
        if isinstance(value, bool):
            detail[name] = str(value).lower()
        elif isinstance(value, int | str):
            detail[name] = str(value)[:200]
    await auditing.record(request, st, "backup.written", f"cluster:{st.config.cluster_id}", detail)
    return {"epoch": newest[0], "revision": newest[1]}


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def cluster_routes() -> list[Route]:
    return [
        Route("/api/v0/cluster/status", admin(status, joiner=True), methods=["GET"]),
        Route("/api/v0/cluster/join", admin(join, joiner=True), methods=["POST"]),
        Route("/api/v0/cluster/join/promote", admin(promote, joiner=True), methods=["POST"]),
        Route("/api/v0/cluster/join/end", admin(join_end, joiner=True), methods=["POST"]),
        Route("/api/v0/cluster/remove", admin(remove), methods=["POST"]),
        Route("/api/v0/cluster/storage-probe", admin(storage_probe, joiner=True), methods=["POST"]),
        Route("/api/v0/join-tokens", admin(join_api.create), methods=["POST"]),
        Route("/api/v0/join-tokens", admin(join_api.listing), methods=["GET"]),
        Route("/api/v0/join-tokens/revoke", admin(join_api.revoke), methods=["POST"]),
        Route("/api/v0/cluster/local-revision", admin(local_revision), methods=["GET"]),
        Route("/api/v0/cluster/backup", admin(backup_metadata), methods=["GET"]),
        Route("/api/v0/cluster/backup", admin(backup_written), methods=["POST"]),
    ]
