"""Admin API for this replica's certificates (`moorage certs status` / `certs rotate` ask
every replica in turn; each answers for itself, from its own `D/tls/`):

* `GET /api/v0/cluster/certs`: the CA, this replica's certificate, the operator's HTTPS one;
* `POST /api/v0/cluster/certs/renew`: a new key and certificate for this replica
  (`moorage.cluster.certs.renew`), then what its etcd member presents on new connections;
* `GET /api/v0/cluster/certs/ca-rotation`: the CA rotation in progress (`{"phase": null}`
  when none);
* `POST /api/v0/cluster/certs/ca-rotation` `{"step": "begin"|"reissue"|"drop"|"finish"}`:
  the cluster-wide steps of `certs rotate --ca` (`moorage.cluster.ca_rotation`);
* `POST /api/v0/cluster/certs/ca-trust` `{"phase": P}`: this replica trusts what phase P
  needs (its CA bundle, its etcd member restarted if it must).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from moorage.api.cluster import admin
from moorage.api.state import AppState
from moorage.cluster import ca_rotation, certs
from moorage.cluster.membership import Refused
from moorage.cluster.tls import ClusterCaUnavailable
from moorage.errors import MoorageError
from moorage.meta.etcd import EtcdCluster

#: etcd loads a renewed pair on its next handshake; a few tries cover the rename window.
PRESENT_TRIES = 10


async def status(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    return await asyncio.to_thread(certs.local_report, st.config)


async def renew(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    try:
        result = await certs.renew(store, st.config)
    except ClusterCaUnavailable as exc:
        raise MoorageError(f"cannot renew this replica's certificate: {exc}") from None
    for _ in range(PRESENT_TRIES):
        shown = await asyncio.to_thread(certs.etcd_presents, st.config)
        if all(v == result["new"] for v in shown.values()):
            break
        await asyncio.sleep(0.2)
    return {**result, **shown, "https_own": st.config.tls_cert is not None}


async def rotation(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    rot = await ca_rotation.current(store)
    return {"phase": None} if rot is None else rot.public()


async def rotation_step(
    request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]
) -> Any:
    step = body.get("step")
    try:
        if step == "begin":
            rot = await ca_rotation.begin(store, st.config)
        elif step in ("reissue", "drop"):
            rot = await ca_rotation.advance(store, str(step))
        elif step == "finish":
            return {"phase": None, "ca_fingerprint": await ca_rotation.finish(store)}
        else:
            raise ValueError("step must be begin, reissue, drop or finish")
    except ca_rotation.RotationError as exc:
        raise Refused(str(exc)) from None
    return rot.public()


async def trust(request: Request, st: AppState, store: EtcdCluster, body: dict[str, Any]) -> Any:
    phase = body.get("phase")
    if phase not in ca_rotation.PHASES:
        raise ValueError(f"phase must be one of {', '.join(ca_rotation.PHASES)}")
    try:
        return await ca_rotation.apply_trust(store, st.config, str(phase))
    except ca_rotation.RotationError as exc:
        raise Refused(str(exc)) from None


def certs_routes() -> list[Route]:
    return [
        Route("/api/v0/cluster/certs", admin(status), methods=["GET"]),
        Route("/api/v0/cluster/certs/renew", admin(renew), methods=["POST"]),
        Route("/api/v0/cluster/certs/ca-rotation", admin(rotation), methods=["GET"]),
        Route("/api/v0/cluster/certs/ca-rotation", admin(rotation_step), methods=["POST"]),
        Route("/api/v0/cluster/certs/ca-trust", admin(trust), methods=["POST"]),
    ]
