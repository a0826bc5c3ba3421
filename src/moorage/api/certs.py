"""Admin API for this replica's certificates (`moorage certs status` / `certs rotate` ask
every replica in turn; each answers for itself, from its own `D/tls/`):

* `GET /api/v0/cluster/certs`: the CA, this replica's certificate, the operator's HTTPS one;
* `POST /api/v0/cluster/certs/renew`: a new key and certificate for this replica
  (`moorage.cluster.certs.renew`), then what its etcd member presents on new connections.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from moorage.api.cluster import admin
from moorage.api.state import AppState
from moorage.cluster import certs
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


def certs_routes() -> list[Route]:
    return [
        Route("/api/v0/cluster/certs", admin(status), methods=["GET"]),
        Route("/api/v0/cluster/certs/renew", admin(renew), methods=["POST"]),
    ]
