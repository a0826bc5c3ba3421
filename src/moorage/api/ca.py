"""`GET /api/v0/cluster/ca`: the cluster CA certificate (PEM), unauthenticated (a CA
certificate is public), for `moorage ca export --existing URL` and clients' trust stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from moorage.api.errors import error_response
from moorage.api.state import AppState
from moorage.pki import TlsDir

PEM_TYPE = "application/x-pem-file"
MAX_CA_BYTES = 64 * 1024  # a CA certificate is about 1 KiB; never send an unbounded file


def _read(path: Path) -> bytes | None:
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_CA_BYTES)
    except OSError:
        return None


async def cluster_ca(request: Request) -> Response:
    st: AppState = request.app.state.moorage
    path = TlsDir(Path(st.config.data_dir)).ca_cert
    pem = await asyncio.to_thread(_read, path)
    if not pem:
        return error_response(
            404,
            "NOT_FOUND",
            "this replica has no cluster CA certificate (its data directory predates TLS); "
            "ask another replica, or use the certificate its --tls-cert chains to",
        )
    return Response(pem, media_type=PEM_TYPE, headers={"Cache-Control": "no-cache"})
