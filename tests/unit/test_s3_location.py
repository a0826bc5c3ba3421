"""`--storage s3://...`: what is accepted, what each part means, and what is refused."""

from __future__ import annotations

import pytest

from moorage.errors import ConfigError
from moorage.storage.s3location import is_s3, parse


def test_a_full_location_parses_and_prints_back() -> None:
    loc = parse(
        "s3://my-bucket/registry/prod?endpoint=https://s3.example.net:9000/&region=eu-west-1"
    )
    assert (loc.bucket, loc.prefix, loc.region) == ("my-bucket", "registry/prod", "eu-west-1")
    assert loc.endpoint == "https://s3.example.net:9000"
    assert loc.addressing == "path"  # an explicit endpoint means an S3-compatible server
    assert loc.key("blobs/x") == "registry/prod/blobs/x"
    assert parse(loc.url()) == loc


def test_defaults_are_aws_virtual_hosted_in_us_east_1() -> None:
    loc = parse("s3://bucket")
    assert (loc.prefix, loc.endpoint, loc.region, loc.addressing, loc.ca) == (
        "",
        None,
        "us-east-1",
        "virtual",
        None,
    )
    assert loc.key("fence.json") == "fence.json"
    assert parse("s3://bucket?addressing=path").addressing == "path"
    assert is_s3("s3://bucket")
    assert not is_s3("/srv/blobs")


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("s3://AB/x", "bucket name"),
        ("s3://a/x", "bucket name"),
        ("s3://key:secret@bucket/x", "credentials do not go in --storage"),
        ("s3://bucket/../x", "prefix"),
        ("s3://bucket/a b", "prefix"),
        ("s3://bucket?endpoint=ftp://h", "endpoint"),
        ("s3://bucket?endpoint=http://h/path", "endpoint"),
        ("s3://bucket?endpoint=http://h:99999", "invalid port"),
        ("s3://bucket?region=EU WEST", "region"),
        ("s3://bucket?addressing=dns", "addressing"),
        ("s3://bucket?ca=relative.pem", "absolute path"),
        ("s3://bucket?ca=/nonexistent/ca.pem", "does not exist"),
        ("s3://bucket?secret=x", "unknown S3 option"),
        ("s3://bucket?region=a&region=b", "exactly one"),
        ("s3://bucket?region=", "exactly one"),
        ("s3://bucket?junk", "NAME=VALUE"),
        ("/srv/blobs", "not an S3 location"),
    ],
)
def test_bad_locations_say_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse(spec)
