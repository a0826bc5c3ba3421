"""The Docker token flow over real HTTP against a real replica (issue #9 items 2, 8, 9):
the Bearer challenge, GET and POST /auth/token, refresh tokens, forged tokens refused, key
rotation, and podman and skopeo going through the token flow by themselves."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from harness.process import AUTH, moorage
from harness.replica import Replica

from moorage.auth import jwt
from moorage.auth.passwords import hash_password
from moorage.auth.signing_keys import unseal
from moorage.cluster.tls import client_tls
from moorage.config import DataDir
from moorage.meta.etcd import EtcdCluster
from moorage.meta.records import SigningKeyRecord, UserRecord
from moorage.pki import TlsDir
from tests.test_clients import build_image, run

_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def params(challenge: str) -> dict[str, str]:
    assert challenge.startswith("Bearer "), challenge
    return dict(_PARAM.findall(challenge))


def first_challenge(resp: httpx.Response) -> str:
    return resp.headers.get_list("www-authenticate")[0]


def passed(resp: httpx.Response) -> bool:
    """The request got past authentication and authorization (the tag list of a repository
    with no tags, or none at all, is a 200 or a 404)."""
    return resp.status_code in (200, 404)


def repo() -> str:
    return f"tok/r-{uuid.uuid4().hex[:10]}"


def token(c: httpx.Client, *scopes: str, auth: Any = AUTH, **extra: str) -> dict[str, Any]:
    r = c.get("/auth/token", params={"scope": list(scopes), **extra}, auth=auth)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def claims(tok: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(jwt.b64url_decode(tok.split(".")[1]))
    return doc


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def assert_refused(resp: httpx.Response) -> None:
    """A 401 in the OCI envelope whose challenge asks for a new token (not insufficient)."""
    assert resp.status_code == 401, resp.text
    assert resp.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert "insufficient_scope" not in resp.headers["www-authenticate"]
    params(first_challenge(resp))


def service(registry: Replica) -> str:
    return DataDir(registry.data_dir).load().cluster_id


def put_blob(c: httpx.Client, name: str, data: bytes, headers: dict[str, str]) -> httpx.Response:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return c.post(
        f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data, headers=headers
    )


def test_challenge_and_get_grants(registry: Replica) -> None:
    name = repo()
    with registry.client(auth=None) as c:
        # /v2/: a Bearer challenge first (realm, service), Basic second for scripts.
        r = c.get("/v2/")
        assert r.status_code == 401
        first, second = r.headers.get_list("www-authenticate")
        assert params(first) == {
            "realm": f"{registry.url}/auth/token",
            "service": service(registry),
        }
        assert second == 'Basic realm="moorage"'
        # A route: the scope it needs. The realm follows the Host the client used when it
        # names this replica, never a forged one.
        r = c.get(f"/v2/{name}/tags/list", headers={"Host": f"localhost:{registry.port}"})
        p = params(r.headers.get_list("www-authenticate")[0])
        assert p["realm"] == f"http://localhost:{registry.port}/auth/token"
        assert p["scope"] == f"repository:{name}:pull"
        for forged in (f"evil.example:{registry.port}", "localhost:1", "x/y"):
            r = c.get(f"/v2/{name}/tags/list", headers={"Host": forged})
            assert params(first_challenge(r))["realm"] == f"{registry.url}/auth/token"
        r = c.post(f"/v2/{name}/blobs/uploads/")
        assert params(first_challenge(r))["scope"] == f"repository:{name}:pull,push"

        # GET with Basic: repeated scopes and space-joined ones, merged per repository.
        doc = token(
            c,
            f"repository:{name}:pull",
            f"repository:{name}:push registry:catalog:*",
            service=service(registry),
            account="admin",
        )
        assert doc["token"] == doc["access_token"]
        assert doc["expires_in"] >= 60
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["issued_at"])
        assert "refresh_token" not in doc
        c1 = claims(doc["token"])
        assert c1["sub"] == "admin"
        assert c1["aud"] == service(registry)
        assert c1["iss"] == "moorage"
        assert c1["exp"] - c1["iat"] == doc["expires_in"]
        assert c1["jti"]
        assert sorted(c1["access"], key=lambda a: a["type"]) == [
            {"type": "registry", "name": "catalog", "actions": ["*"]},
            {"type": "repository", "name": name, "actions": ["pull", "push"]},
        ]
        header = jwt.unverified_header(doc["token"])
        assert header["alg"] == "ES256"
        keys = c.get("/api/v0/token-keys", auth=AUTH).json()["keys"]
        assert header["kid"] in {k["kid"] for k in keys}

        # The token does what it grants, and nothing more.
        h = bearer(doc["token"])
        assert c.get("/v2/", headers=h).status_code == 200
        assert put_blob(c, name, b"token blob", h).status_code == 201
        assert passed(c.get(f"/v2/{name}/tags/list", headers=h))
        assert c.get("/v2/_catalog", headers=h).status_code == 200
        r = c.delete(f"/v2/{name}/manifests/latest", headers=h)
        assert r.status_code == 401
        p = params(first_challenge(r))
        assert p["error"] == "insufficient_scope"
        assert p["scope"] == f"repository:{name}:delete"
        r = c.get(f"/v2/{name}x/tags/list", headers=h)
        assert params(first_challenge(r))["error"] == "insufficient_scope"
        # The admin API takes passwords only.
        assert c.get("/api/v0/cluster/status", headers=h).status_code == 401

        # Anonymous: a token, granting nothing (requested ∩ allowed is not an error).
        anon = token(c, f"repository:{name}:pull", auth=None)
        assert claims(anon["token"])["sub"] == ""
        assert claims(anon["token"])["access"] == []
        r = c.get(f"/v2/{name}/tags/list", headers=bearer(anon["token"]))
        assert params(first_challenge(r))["error"] == "insufficient_scope"

        # Refusals.
        r = c.get("/auth/token", params={"scope": f"repository:{name}:pull"}, auth=("admin", "no"))
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_grant"
        assert c.get("/auth/token", params={"service": "another"}, auth=AUTH).status_code == 400
        for bad in ("repository:x", "repository::pull", "REPO:x:pull", "a:b:PULL"):
            r = c.get("/auth/token", params={"scope": bad}, auth=AUTH)
            assert r.status_code == 400, bad
            assert r.json()["error"] == "invalid_scope"
        r = c.get("/auth/token", headers=bearer(doc["token"]))
        assert r.status_code == 401

        # `repository:X:*` (what skopeo, podman and crane ask to delete): every action held.
        star = claims(token(c, f"repository:{name}:*", account="admin")["token"])
        assert star["access"] == [
            {"type": "repository", "name": name, "actions": ["delete", "pull", "push"]}
        ]
        assert claims(token(c, f"repository:{name}:*", auth=None)["token"])["access"] == []

        # Names no repository can have are never signed into a token (even for an admin),
        # and too many scopes are told as such.
        for odd in (f"{name}/../x", f"{name}\x00", f"{name}/\u00fc", "a" * 300, f"{name}:pull"):
            got = claims(token(c, f"repository:{odd}:pull,push", account="admin")["token"])
            assert got["access"] == [], odd
        many = " ".join(f"repository:{name}{i}:pull" for i in range(33))
        r = c.get("/auth/token", params={"scope": many}, auth=AUTH)
        assert r.status_code == 400
        assert "more than 32 scopes" in r.json()["error_description"]


def test_post_grants_and_refresh(registry: Replica) -> None:
    name = repo()
    svc = service(registry)
    with registry.client(auth=None) as c:
        # password grant; `scope` repeated (containers/image) and space-joined (the spec).
        body = [
            ("grant_type", "password"),
            ("username", AUTH[0]),
            ("password", AUTH[1]),
            ("service", svc),
            ("client_id", "test"),
            ("access_type", "offline"),
            ("scope", f"repository:{name}:pull"),
            ("scope", f"repository:{name}:push repository:{name}-b:pull"),
        ]
        r = c.post("/auth/token", content=urllib.parse.urlencode(body),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["access_token"] == doc["token"]
        assert doc["expires_in"] >= 60
        assert doc["scope"] == f"repository:{name}:pull,push repository:{name}-b:pull"
        refresh = doc["refresh_token"]
        assert put_blob(c, name, b"posted", bearer(doc["access_token"])).status_code == 201

        # refresh_token grant: a new access token, the same refresh token back.
        r = c.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh,
                                        "service": svc, "client_id": "test",
                                        "scope": f"repository:{name}:pull"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["refresh_token"] == refresh
        assert claims(r.json()["access_token"])["access"] == [
            {"type": "repository", "name": name, "actions": ["pull"]}
        ]
        # A refresh token is not an access token, nor the reverse.
        assert_refused(c.get(f"/v2/{name}/tags/list", headers=bearer(refresh)))
        r = c.post("/auth/token", data={"grant_type": "refresh_token",
                                        "refresh_token": doc["access_token"]})  # fmt: skip
        assert r.status_code == 401
        # GET with offline_token=true also gives one.
        assert token(c, auth=AUTH, offline_token="true")["refresh_token"]

        # What the token endpoint does not do.
        r = c.post("/auth/token", data={"grant_type": "client_credentials"})
        assert r.status_code == 400
        assert r.json()["error"] == "unsupported_grant_type"
        r = c.post("/auth/token", data={"grant_type": "password", "username": "admin",
                                        "password": "wrong"})  # fmt: skip
        assert r.status_code == 401
        r = c.post("/auth/token", content=b'{"grant_type":"password"}',
                   headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 400
        r = c.post("/auth/token", content=b"x" * 100_000,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert r.status_code == 413
        assert c.put("/auth/token").status_code == 405


def _store(registry: Replica) -> EtcdCluster:
    config = DataDir(registry.data_dir).load()
    return EtcdCluster(config.store_endpoints, tls=client_tls(config))


def test_refresh_token_dies_with_the_password(registry: Replica) -> None:
    name = f"refresher{uuid.uuid4().hex[:6]}"

    async def put_user(password: str) -> None:
        store = _store(registry)
        try:
            await store.put_user(UserRecord(name, hash_password(password), "admin"))
        finally:
            await store.close()

    asyncio.run(put_user("first-password"))
    with registry.client(auth=None) as c:
        refresh = token(c, auth=(name, "first-password"), offline_token="true")["refresh_token"]
        grant = {"grant_type": "refresh_token", "refresh_token": refresh}
        assert c.post("/auth/token", data=grant).status_code == 200
        asyncio.run(put_user("second-password"))
        r = c.post("/auth/token", data=grant)
        assert r.status_code == 401
        assert "log in again" in r.json()["error_description"]


def test_a_token_dies_with_its_account(registry: Replica) -> None:
    """A user's access token names the account it was issued to: deleting the account and
    making one of the same name again, a new password, or a disable (even once enabled
    again) refuses it (a 401 whose challenge sends the client for a new token:
    `invalid_token`, not `insufficient_scope`)."""
    name = f"dave{uuid.uuid4().hex[:6]}"

    def refused(resp: httpx.Response) -> None:  # a 401 whose challenge a client answers
        assert resp.status_code == 401, resp.text
        assert resp.json()["errors"][0]["code"] == "UNAUTHORIZED"
        challenge = params(first_challenge(resp))
        assert challenge["realm"].endswith("/auth/token")
        assert challenge["error"] == "invalid_token"

    scope = f"repository:{name}/app:pull,push,delete"
    with registry.client(auth=None) as c:

        def admin(action: str, **body: Any) -> None:
            r = c.post(f"/api/v0/users{action}", json={"name": name, **body}, auth=AUTH)
            assert r.status_code in (200, 201), r.text

        admin("", password="first-password-1")
        first = bearer(token(c, scope, auth=(name, "first-password-1"))["token"])
        assert passed(c.get(f"/v2/{name}/app/tags/list", headers=first))
        admin("/delete")
        refused(c.get(f"/v2/{name}/app/tags/list", headers=first))
        admin("", password="first-password-1")  # the same name and password, a new account
        refused(c.get(f"/v2/{name}/app/tags/list", headers=first))
        second = bearer(token(c, scope, auth=(name, "first-password-1"))["token"])
        assert passed(c.get(f"/v2/{name}/app/tags/list", headers=second))
        admin("/passwd", password="second-password-2")
        refused(c.get(f"/v2/{name}/app/tags/list", headers=second))
        doc = token(c, scope, auth=(name, "second-password-2"), offline_token="true")
        third = bearer(doc["token"])
        assert passed(c.get(f"/v2/{name}/app/tags/list", headers=third))
        # A disable ends every token made so far for good: enabling the account again (one
        # disabled as compromised) brings back neither its Bearer nor its refresh tokens.
        grant = {"grant_type": "refresh_token", "refresh_token": doc["refresh_token"]}
        admin("/disable")
        refused(c.get(f"/v2/{name}/app/tags/list", headers=third))
        admin("/enable")
        refused(c.get(f"/v2/{name}/app/tags/list", headers=third))
        assert c.post("/auth/token", data=grant).status_code == 401
        fourth = bearer(token(c, scope, auth=(name, "second-password-2"))["token"])
        assert passed(c.get(f"/v2/{name}/app/tags/list", headers=fourth))
        admin("/enable")  # enabling an enabled account ends nothing
        assert passed(c.get(f"/v2/{name}/app/tags/list", headers=fourth))


def _signer(registry: Replica) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The cluster's newest signing key, unsealed as a replica would (to forge tokens that
    are valid in every way but one)."""

    async def read() -> tuple[str | None, int, list[bytes]]:
        store = _store(registry)
        try:
            return await store.signing_keys(16)
        finally:
            await store.close()

    newest, _, raws = asyncio.run(read())
    record = next(r for r in map(SigningKeyRecord.decode, raws) if r.kid == newest)
    return record.kid, unseal(record, TlsDir(registry.data_dir).read_secret())


def _forge(header: dict[str, Any], body: dict[str, Any], sign: Any) -> str:
    h = jwt.b64url(json.dumps(header).encode())
    p = jwt.b64url(json.dumps(body).encode())
    return f"{h}.{p}.{jwt.b64url(sign(f'{h}.{p}'.encode()))}"


def test_forged_tokens_are_refused(registry: Replica) -> None:
    name = repo()
    with registry.client(auth=None) as c:
        good = token(c, f"repository:{name}:pull,push")["token"]
        assert passed(c.get(f"/v2/{name}/tags/list", headers=bearer(good)))
        kid, key = _signer(registry)
        base = claims(good)
        head, _payload, sig = good.split(".")

        now = int(time.time())
        attacker = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(
            json.dumps(c.get("/api/v0/token-keys", auth=AUTH).json()["keys"][0]["jwk"])
        )
        forged = {
            "alg none": _forge({"alg": "none", "kid": kid}, base, lambda d: b""),
            "HS256 with the public key": _forge(
                {"alg": "HS256", "kid": kid}, base,
                lambda d: hmac.new(json.dumps(jwk).encode(), d, hashlib.sha256).digest(),
            ),
            "unknown kid": jwt.encode(base, attacker, jwt.key_id(attacker.public_key())),
            "attacker key under our kid": jwt.encode(base, attacker, kid),
            "jwk header injection": _forge(
                {"alg": "ES256", "kid": kid, "jwk": jwt.public_jwk(attacker.public_key())},
                base, lambda d: _raw_sign(attacker, d),
            ),
            "wrong aud (another service)": jwt.encode({**base, "aud": "another-cluster"}, key, kid),
            "wrong issuer": jwt.encode({**base, "iss": "someone"}, key, kid),
            "expired": jwt.encode({**base, "exp": now - 600, "nbf": now - 900}, key, kid),
            "not yet valid": jwt.encode({**base, "nbf": now + 3600}, key, kid),
            "tampered payload": head + "." + jwt.b64url(json.dumps(
                {**base, "access": [{"type": "repository", "name": "*", "actions": ["*"]}]}
            ).encode()) + "." + sig,
            "another cluster's token": jwt.encode(
                {**base, "aud": uuid.uuid4().hex},
                ec.generate_private_key(ec.SECP256R1()),
                "another-cluster-kid",
            ),
            "truncated": good[:-10],
            "garbage": "abc",
        }  # fmt: skip
        for why, tok in forged.items():
            r = c.get(f"/v2/{name}/tags/list", headers=bearer(tok))
            assert r.status_code == 401, why
            assert_refused(r)
            r = put_blob(c, name, why.encode(), bearer(tok))
            assert r.status_code == 401, why
        # The forger's signing works: the same claims signed by the real key pass.
        assert passed(c.get(f"/v2/{name}/tags/list", headers=bearer(jwt.encode(base, key, kid))))


def _raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def test_key_rotation(registry: Replica) -> None:
    name = repo()
    env_url = ["--existing", registry.url, "--username", AUTH[0]]
    with registry.client(auth=None) as c:
        old = token(c, f"repository:{name}:pull")["token"]
        old_kid = jwt.unverified_header(old)["kid"]
        doc = json.loads(moorage("token-keys", "rotate", *env_url, "--json").stdout)
        assert doc["kid"] != old_kid
        new = token(c, f"repository:{name}:pull")["token"]
        assert jwt.unverified_header(new)["kid"] == doc["kid"]
        # Both verify: the old key keeps verifying after the rotation.
        for tok in (old, new):
            assert passed(c.get(f"/v2/{name}/tags/list", headers=bearer(tok)))
        listing = json.loads(moorage("token-keys", "list", *env_url, "--json").stdout)["keys"]
        signing = [k["kid"] for k in listing if k["signing"]]
        assert signing == [doc["kid"]]
        assert old_kid in {k["kid"] for k in listing}
        assert all("sealed" not in k and "d" not in k["jwk"] for k in listing)
        text = moorage("token-keys", "list", *env_url).stdout
        assert doc["kid"] in text
        assert "signing" in text


def _log_since(registry: Replica, offset: int) -> str:
    return registry.log.read_bytes()[offset:].decode(errors="replace")


@pytest.mark.clients
def test_podman_and_skopeo_use_the_token_flow(
    registry: Replica, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src = tmp_path / "src"
    digest = build_image(src, "v1", "amd64", [{"hello.txt": b"token flow\n"}], tmp_path)
    creds = f"{AUTH[0]}:{AUTH[1]}"

    # skopeo: copy in with credentials; it gets a Bearer token for the repository.
    name = repo()
    offset = registry.log.stat().st_size
    run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", creds,
        f"oci:{src}:v1", f"docker://{registry.host}/{name}:v1")  # fmt: skip
    log = _log_since(registry, offset)
    assert (
        f"issued a token to 'admin' (user) from 127.0.0.1 for 'repository:{name}:pull,push'" in log
    )
    out = run("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds,
              f"docker://{registry.host}/{name}:v1")  # fmt: skip
    assert "sha256:" + hashlib.sha256(out.encode()).hexdigest() == digest

    # podman: login (a token for no scope), push and pull with its stored credentials.
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed; this test needs it")
    runroot = Path(tempfile.mkdtemp(prefix="moorage-tok-"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    authfile = tmp_path / "auth.json"
    base = ["podman", "--root", str(tmp_path / "root"), "--runroot", str(runroot),
            "--tmpdir", str(tmp_path / "ptmp"), "--storage-driver", "vfs"]  # fmt: skip
    offset = registry.log.stat().st_size
    run(*base, "login", "--tls-verify=false", "--authfile", str(authfile),
        "-u", AUTH[0], "-p", AUTH[1], registry.host)  # fmt: skip
    assert "issued a token to 'admin'" in _log_since(registry, offset)
    # A wrong password fails the login at the token endpoint.
    wrong = ["login", "--tls-verify=false", "--authfile", str(tmp_path / "x.json"),
             "-u", "admin", "-p", "wrong", registry.host]  # fmt: skip
    p = subprocess.run([*base, *wrong], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0

    image_id = run(*base, "pull", f"oci:{src}:v1").strip().splitlines()[-1]
    pname = repo()
    ref = f"{registry.host}/{pname}:v1"
    run(*base, "tag", image_id, ref)
    offset = registry.log.stat().st_size
    run(*base, "push", "--tls-verify=false", "--authfile", str(authfile), ref)
    log = _log_since(registry, offset)
    assert f"for 'repository:{pname}:pull,push'" in log
    run(*base, "rmi", "--force", image_id)
    offset = registry.log.stat().st_size
    pulled = run(*base, "pull", "--tls-verify=false", "--authfile", str(authfile), ref)
    assert pulled.strip().splitlines()[-1] == image_id
    assert f"for 'repository:{pname}:pull'" in _log_since(registry, offset)


def test_another_cluster_and_key_pickup_across_workers(registry: Replica, tmp_path: Path) -> None:
    """Cluster B (two API workers: two processes with their own copy of the key set) refuses
    cluster A's tokens and A refuses B's; after a rotation on B, every token B issues, from
    whichever worker, verifies on every worker (an unknown kid makes a worker re-read)."""
    other = Replica(tmp_path / "b", workers=2)
    other.start()
    try:
        name = repo()
        with registry.client(auth=None) as a, other.client(auth=None) as b:
            from_a = token(a, f"repository:{name}:pull")["token"]
            from_b = token(b, f"repository:{name}:pull")["token"]
            assert claims(from_b)["aud"] == service(other) != service(registry)
            for _ in range(4):  # reach both of B's workers
                assert_refused(b.get(f"/v2/{name}/tags/list", headers=bearer(from_a)))
            assert_refused(a.get(f"/v2/{name}/tags/list", headers=bearer(from_b)))
            # The same claims under A's audience, signed by B's key: still not A's.
            kid, key = _signer(other)
            moved = jwt.encode({**claims(from_b), "aud": service(registry)}, key, kid)
            assert_refused(a.get(f"/v2/{name}/tags/list", headers=bearer(moved)))

            # Failed logins at the token endpoint are limited like any (429, Retry-After).
            wrong = {"scope": f"repository:{name}:pull"}
            statuses = []
            for _ in range(15):
                r = b.get("/auth/token", params=wrong, auth=("nobody", "wrong"))
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) > 0
                    assert "retry in" in r.json()["error_description"]
                    break
            assert statuses[0] == 401
            assert statuses[-1] == 429, statuses

            env = ["--existing", other.url, "--username", AUTH[0], "--json"]
            rotated = json.loads(moorage("token-keys", "rotate", *env).stdout)["kid"]
            for _ in range(6):
                fresh = token(b, f"repository:{name}:pull")["token"]
                assert jwt.unverified_header(fresh)["kid"] == rotated
                for tok in (fresh, from_b):
                    for _ in range(3):
                        assert passed(b.get(f"/v2/{name}/tags/list", headers=bearer(tok)))
    finally:
        other.stop()
