"""Moorage against the Distribution reference registry, side by side (`python -m bench`).

Over HTTPS the client offers TLS 1.3's AES-128-GCM first, as the registry clients people use
do (docker, podman, skopeo, containerd: Go's crypto/tls on AES hardware). Python's OpenSSL
offers AES-256-GCM first; Distribution (Go) picks AES-128 whatever the client prefers, while
granian (rustls) follows the client's order, so with OpenSSL's default order Moorage would pay
for AES-256 where Distribution pays for AES-128, and the client would decrypt the two
differently. Python's `ssl` cannot set TLS 1.3 suites, so this goes through OpenSSL's
configuration, which it reads when the first TLS context is made (hence here, before any
module of the benchmark runs). An OPENSSL_CONF set by the caller is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

OPENSSL_CONF = Path(__file__).resolve().parent / "openssl-client.cnf"
os.environ.setdefault("OPENSSL_CONF", str(OPENSSL_CONF))
