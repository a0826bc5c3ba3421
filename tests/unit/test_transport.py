"""The API's transport settings (DESIGN.md §7) without processes: when a replica serves
HTTPS, which files it serves, what it refuses, old configs, and the CLI's trust."""

from __future__ import annotations

import dataclasses
import json
import ssl
import threading
from pathlib import Path

import click
import pytest

from moorage.cli.options import transport_settings
from moorage.config import DataDir, ReplicaConfig, is_loopback
from moorage.errors import ConfigError
from moorage.pki import TlsDir, create_ca, issue_replica
from moorage.pki import trust as trust_mod
from moorage.pki.ca import cert_pem, key_pem
from moorage.server import transport


def config(tmp_path: Path, http_addr: str = "127.0.0.1:5000", **kw: object) -> ReplicaConfig:
    base = ReplicaConfig(
        data_dir=str(tmp_path),
        cluster_id="c",
        replica_id="r",
        http_addr=http_addr,
        storage=str(tmp_path / "blobs"),
        etcd_client_port=12379,
        etcd_peer_port=12380,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def cluster_material(d: Path) -> TlsDir:
    ca = create_ca("c")
    key, cert = issue_replica(ca, "r", ["127.0.0.1"])
    tls = TlsDir(d)
    tls.write_ca(ca.cert)
    tls.write_key(key)
    tls.write_cert(cert)
    return tls


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.1", False), ("registry.example", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_when_the_api_serves_https(tmp_path: Path) -> None:
    assert config(tmp_path).url == "http://127.0.0.1:5000"  # make run: plain on loopback
    assert config(tmp_path, tls=True).url == "https://127.0.0.1:5000"
    assert config(tmp_path, tls_cert="c", tls_key="k").url == "https://127.0.0.1:5000"
    assert config(tmp_path, "10.1.2.3:5000").url == "https://10.1.2.3:5000"
    assert config(tmp_path, "0.0.0.0:5000").url == "https://127.0.0.1:5000"
    assert config(tmp_path, "10.1.2.3:5000", insecure_http=True).url == "http://10.1.2.3:5000"


def test_old_config_files_load_and_keep_serving_as_before(tmp_path: Path) -> None:
    d = DataDir(tmp_path)
    for addr, insecure in (("10.1.2.3:5000", True), ("127.0.0.1:5000", False)):
        doc = dataclasses.asdict(config(tmp_path, addr))
        for name in ("tls", "tls_cert", "tls_key", "insecure_http"):
            del doc[name]  # a moorage.json written before HTTPS
        d.config_file.write_text(json.dumps(doc))
        loaded = d.load()
        assert loaded.insecure_http is insecure
        assert loaded.url.startswith("http://")
    d.save(config(tmp_path, "10.1.2.3:5000"))  # a new one: HTTPS
    assert d.load().url == "https://10.1.2.3:5000"
    assert d.load().transport == {
        "tls": False, "tls_cert": None, "tls_key": None, "insecure_http": False
    }  # fmt: skip


def test_material_refusals_say_what_to_do(tmp_path: Path) -> None:
    assert transport.material(config(tmp_path)) is None
    assert transport.material(config(tmp_path, "10.0.0.1:5000", insecure_http=True)) is None
    for cfg, why in (
        (config(tmp_path, "10.0.0.1:5000"), "10.0.0.1 is not a loopback address"),
        (config(tmp_path, tls=True), "--tls"),
    ):
        with pytest.raises(ConfigError) as err:
            transport.material(cfg)
        assert why in str(err.value)
        assert "--tls-cert FILE --tls-key FILE" in str(err.value)
        assert "--insecure-http" in str(err.value)
    tls = cluster_material(tmp_path)
    found = transport.material(config(tmp_path, tls=True))
    assert found == transport.Material(tls.cert, tls.key, own=False)
    # The operator's pair: a key that does not match its certificate is refused by name.
    other = create_ca("other")
    okey, ocert = issue_replica(other, "op", ["127.0.0.1"])
    (tmp_path / "op.crt").write_bytes(cert_pem(ocert))
    (tmp_path / "wrong.key").write_bytes(tls.key.read_bytes())
    bad = config(tmp_path, tls_cert=str(tmp_path / "op.crt"), tls_key=str(tmp_path / "wrong.key"))
    with pytest.raises(ConfigError, match="must both be readable and match"):
        transport.material(bad)
    (tmp_path / "op.key").write_bytes(key_pem(okey))
    good = dataclasses.replace(bad, tls_key=str(tmp_path / "op.key"))
    assert transport.material(good) == transport.Material(
        tmp_path / "op.crt", tmp_path / "op.key", own=True
    )
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        transport.material(dataclasses.replace(good, tls_key=None))


def test_watch_reloads_only_a_complete_new_pair(tmp_path: Path) -> None:
    tls = cluster_material(tmp_path)
    found = transport.Material(tls.cert, tls.key, own=False)
    reloads: list[int] = []
    stop = threading.Event()
    old_interval = transport.WATCH_INTERVAL
    transport.WATCH_INTERVAL = 0.01
    try:
        thread = transport.watch(found, lambda: reloads.append(1), stop)
        # A new certificate whose key is not there yet: the old pair keeps being served.
        ca = create_ca("c2")
        key, cert = issue_replica(ca, "r", ["127.0.0.1"])
        tls.write_cert(cert)
        for _ in range(50):
            stop.wait(0.01)
        assert reloads == []
        tls.write_key(key)
        for _ in range(500):
            if reloads:
                break
            stop.wait(0.01)
        assert reloads == [1]
    finally:
        stop.set()
        transport.WATCH_INTERVAL = old_interval
    thread.join(5)
    assert not thread.is_alive()


def test_transport_flags(tmp_path: Path) -> None:
    assert transport_settings(False, None, None, False) == {
        "tls": False, "tls_cert": None, "tls_key": None, "insecure_http": False
    }  # fmt: skip
    (tmp_path / "c").write_text("x")
    got = transport_settings(True, str(tmp_path / "c"), str(tmp_path / "c"), False)
    assert got["tls_cert"] == str((tmp_path / "c").resolve())
    with pytest.raises(click.UsageError, match="both --tls-cert and --tls-key"):
        transport_settings(False, "c", None, False)
    with pytest.raises(click.UsageError, match="contradicts"):
        transport_settings(True, None, None, True)


def test_trust_adds_cluster_cas_to_the_system_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trust_mod, "_ca_files", [])
    monkeypatch.setattr(trust_mod, "_data_dirs", [])
    monkeypatch.setattr(trust_mod, "_cache", None)
    before = len(trust_mod.client_context().get_ca_certs())
    trust_mod.trust_data_dir(tmp_path)  # no D/tls/ yet: nothing more, no error
    assert len(trust_mod.client_context().get_ca_certs()) == before
    cluster_material(tmp_path)  # install made it later: now trusted
    ctx = trust_mod.client_context()
    assert len(ctx.get_ca_certs()) == before + 1
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert trust_mod.client_context() is ctx  # cached while the files are unchanged


def test_status_next_block_says_how_to_trust_an_https_cluster() -> None:
    from moorage.cluster.guidance import next_block

    def block(url: str) -> str:
        cmd = f"moorage remove --existing {url} --replica-id abc --yes"
        return "\n".join(next_block({"commands": [{"command": cmd, "note": "", "host": None}]}))

    assert "MOORAGE_CA_FILE" in block("https://10.0.0.1:5000")
    assert "ca export --data-dir" in block("https://10.0.0.1:5000")
    assert "MOORAGE_CA_FILE" not in block("http://127.0.0.1:5000")


def test_bare_existing_addresses_get_the_scheme_the_replica_serves() -> None:
    from moorage.recovery.client import split_urls

    assert split_urls("127.0.0.1:5000, localhost:5001,[::1]:5002") == [
        "http://127.0.0.1:5000", "http://localhost:5001", "http://[::1]:5002"
    ]  # fmt: skip
    assert split_urls("10.0.0.1:5000,reg.example:443/") == [
        "https://10.0.0.1:5000", "https://reg.example:443"
    ]  # fmt: skip
    assert split_urls("http://10.0.0.1:5000") == ["http://10.0.0.1:5000"]  # as given


def test_run_flags_change_an_existing_replica_only_when_it_can_serve_so(tmp_path: Path) -> None:
    from moorage.cli.replica import _with_transport

    d = DataDir(tmp_path)
    old = config(tmp_path)
    d.save(old)
    none = transport_settings(False, None, None, False)
    assert _with_transport(d, old, none, fresh=False) == old  # make run again: unchanged
    tls = transport_settings(True, None, None, False)
    with pytest.raises(ConfigError, match="no certificate"):
        _with_transport(d, old, tls, fresh=False)
    assert d.load() == old  # refused: the replica keeps its settings and its moorage.json
    cluster_material(tmp_path)
    assert _with_transport(d, old, tls, fresh=False).url.startswith("https://")
    assert d.load().tls is True
    # A new replica that cannot serve as asked leaves no moorage.json behind.
    fresh = DataDir(tmp_path / "new")
    fresh.save(config(tmp_path / "new", "10.0.0.1:5000"))
    with pytest.raises(ConfigError, match="not a loopback address"):
        _with_transport(fresh, fresh.load(), none, fresh=True)
    assert not fresh.exists()


def test_a_worker_asks_clients_to_close_once_its_certificate_was_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the certificate changes (the workers are respawned DRAIN seconds later), every
    response carries `Connection: close`, so no kept-alive connection is idle on the old
    worker when it stops; before, responses keep their connection."""
    import asyncio

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("one")
    key.write_text("key")
    sent: list[dict[str, object]] = []

    async def app(scope: object, receive: object, send: object) -> None:
        assert callable(send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"connection", b"keep-alive"), (b"x", b"1")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    monkeypatch.setattr(transport, "CHECK_EVERY", 0.0)
    mw = transport.CloseWhenReplaced(app, transport.Material(cert, key, own=False))
    asyncio.run(mw({"type": "http"}, receive, send))  # type: ignore[arg-type]
    assert sent[0]["headers"] == [(b"connection", b"keep-alive"), (b"x", b"1")]
    cert.write_text("two, renewed")
    sent.clear()
    asyncio.run(mw({"type": "http"}, receive, send))  # type: ignore[arg-type]
    assert sent[0]["headers"] == [(b"x", b"1"), (b"connection", b"close")]
    assert sent[1] == {"type": "http.response.body", "body": b""}
