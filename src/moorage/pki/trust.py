"""Whom an HTTPS client of this process trusts: the system's CAs plus the cluster CAs it was
given (`--ca-file`, the `D/tls/ca.crt` of a `--data-dir`, a replica's own data directory).

The CLI runs one command per process, and a replica process belongs to one cluster, so the
trust is process-wide: `trust_ca_file` / `trust_data_dir` add to it, `client_context()` is the
SSL context every HTTPS client of Moorage uses (the admin client, `/_ping` probes, a replica
pinging its peers). Verification is never switched off; TLS 1.2 is the floor.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

_lock = threading.Lock()
_ca_files: list[Path] = []
_data_dirs: list[Path] = []
_ca_pems: list[str] = []
_cache: tuple[tuple[tuple[str, float], ...], ssl.SSLContext] | None = None
_plain: ssl.SSLContext | None = None


def trust_ca_file(path: str | Path) -> None:
    """Trust the CA certificate(s) in `path` (PEM) from now on, in this process."""
    with _lock:
        p = Path(path).resolve()
        if p not in _ca_files:
            _ca_files.append(p)


def trust_data_dir(path: str | Path) -> None:
    """Trust the cluster CA of the data directory `path` (`path/tls/ca.crt`), read when a
    context is made: the file may appear later (install creates it)."""
    with _lock:
        p = Path(path).resolve()
        if p not in _data_dirs:
            _data_dirs.append(p)


def trust_ca_pem(pem: bytes) -> None:
    """Trust this CA certificate (PEM) from now on, in this process (a pinned CA)."""
    with _lock:
        text = pem.decode()
        if text not in _ca_pems:
            _ca_pems.append(text)


def _present() -> tuple[tuple[str, float], ...]:
    files = [*_ca_files, *(d / "tls" / "ca.crt" for d in _data_dirs)]
    out = []
    for f in files:
        try:
            out.append((str(f), f.stat().st_mtime))
        except OSError:
            continue
    out.extend((f"pem:{i}", 0.0) for i in range(len(_ca_pems)))
    return tuple(out)


def client_context() -> ssl.SSLContext:
    """The system's CAs and every trusted cluster CA; host names checked; TLS 1.2+."""
    global _cache
    with _lock:
        key = _present()
        if _cache is not None and _cache[0] == key:
            return _cache[1]
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for name, _ in key:
            if not name.startswith("pem:"):
                ctx.load_verify_locations(cafile=name)
        for pem in _ca_pems:
            ctx.load_verify_locations(cadata=pem)
        _cache = (key, ctx)
        return ctx


def context_for(*urls: str) -> ssl.SSLContext:
    """What an HTTP client of `urls` verifies with: `client_context()` when one is https://;
    for plain-HTTP URLs only, a context that trusts no CA (a TLS handshake with it would
    fail; none happens). Loading the system's CAs is ~50 ms of CPU: a command that talks to
    http:// replicas (the loopback default) does not pay it."""
    global _plain
    if any(u.startswith("https:") for u in urls):
        return client_context()
    with _lock:
        if _plain is None:
            _plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            _plain.minimum_version = ssl.TLSVersion.TLSv1_2
        return _plain
