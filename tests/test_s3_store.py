"""The object store the S3 tests use is real: SeaweedFS's S3 gateway on loopback, checking
signatures, reached through Moorage's own client (moorage.storage.s3location)."""

from __future__ import annotations

import asyncio

import httpx
from harness.seaweed import BUCKET, SeaweedFS

from moorage.storage.s3location import open_client, parse


def test_the_client_stores_reads_lists_and_conditionally_creates(
    seaweed: SeaweedFS, s3_url: str
) -> None:
    loc = parse(s3_url)

    async def run() -> tuple[bytes, list[str], str]:
        async with open_client(loc) as s3:
            await s3.put_object(Bucket=loc.bucket, Key=loc.key("a"), Body=b"alpha")
            got = await (await s3.get_object(Bucket=loc.bucket, Key=loc.key("a")))["Body"].read()
            listed = await s3.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key(""), MaxKeys=10)
            try:  # a create that must not replace: what the fence marker relies on
                await s3.put_object(Bucket=loc.bucket, Key=loc.key("a"), Body=b"b", IfNoneMatch="*")
                outcome = "replaced"
            except s3.exceptions.ClientError as exc:
                outcome = exc.response["Error"]["Code"]
            return got, [o["Key"] for o in listed.get("Contents", [])], outcome

    got, keys, outcome = asyncio.run(run())
    assert got == b"alpha"
    assert keys == [loc.key("a")]
    assert outcome == "PreconditionFailed"
    assert seaweed.keys(loc.key("")) == [loc.key("a")]
    # Unsigned requests are refused: the store checks credentials like a real one.
    anonymous = httpx.get(f"{seaweed.endpoint}/{BUCKET}/{loc.key('a')}")
    assert anonymous.status_code == 403
