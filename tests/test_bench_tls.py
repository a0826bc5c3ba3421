"""The benchmark over HTTPS (`python -m bench --tls` / `--tls-compare`, issue 12 item 7): Moorage
serves its own cluster certificate (made by `run --tls`; the benchmark once wrote a bench CA's
certificate into D/tls/ first, which `run` replaced, so Moorage never became ready), and the
client trusts exactly Moorage's cluster CA and the bench CA of Distribution. Also the table
that compares the two transports."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest
import uvloop
from bench import _http, servers, workloads
from bench.report import Results, tls_table


def test_both_registries_serve_https_that_the_bench_client_verifies(tmp_path: Path) -> None:
    pki = servers.BenchPki.make(tmp_path)
    moorage = servers.moorage(tmp_path, 1, True, "Moorage HTTPS")
    dist = servers.distribution(tmp_path, pki, "Distribution HTTPS")
    under_test = [moorage, dist]
    try:
        for server in under_test:
            server.start()
        for server in under_test:
            server.wait_ready()
        assert moorage.url.startswith("https://")
        assert dist.url.startswith("https://")
        assert moorage.ca_file == tmp_path / "moorage-https" / "tls" / "ca.crt"
        # Moorage's certificate is of its own cluster CA, not of the bench CA.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{moorage.url}/v2/", verify=servers.client_context([pki.ca_file]))
        context = servers.client_context([pki.ca_file, moorage.ca_file])
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        _http.TLS_CONTEXT = context
        parts = workloads.ImageParts.new()

        async def push_all() -> list[int]:
            statuses = []
            for server in under_test:
                target = workloads.Target(server.name, server.url, server.authorization)
                conn = target.connect()
                try:
                    await workloads.push_parts(conn, "bench/tls", parts, None)
                    reply = await workloads.put_manifest(
                        conn, "bench/tls", "v1", parts.manifest("tls")
                    )
                    statuses.append(reply.status)
                finally:
                    conn.close()
            await asyncio.sleep(0.2)  # the TLS shutdowns finish before the loop closes
            return statuses

        assert uvloop.run(push_all()) == [201, 201]
    finally:
        _http.TLS_CONTEXT = None
        for server in under_test:
            server.stop()


def test_tls_table_compares_each_registry_over_both_transports() -> None:
    results = Results()
    for server, value in {
        "Moorage": 100.0, "Moorage HTTPS": 50.0, "Distribution": 80.0,
        "Distribution HTTPS": 80.0,
    }.items():  # fmt: skip
        results.add("pull", server, value)
        results.add("catalog", server, value / 10)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in tls_table(results).splitlines()}
    assert rows["pull (GET blob)"] == (
        "| pull (GET blob) | MB/s | 100 | 50 | -50 % | 80 | 80 | +0 % | 1.25x | 0.62x |"
    )
    # Lower is better for a latency: half the milliseconds is a +50 % change; no "-0 %".
    assert "| 10.0 | 5.0 | +50 % | 8.0 | 8.0 | +0 % |" in rows["catalog n=1000"]
