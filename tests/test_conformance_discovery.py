"""OCI distribution-spec conformance, content discovery workflow, ported to pytest.

Ported from opencontainers/distribution-spec `conformance/`: the Ginkgo suite's
03_discovery_test.go (tag list with `n` and `last`, the referrers setup with OCI-Subject
checks, referrers listing with and without the artifactType filter, referrers of a missing
subject, teardown) and the newer runner's discovery checks (run.go TestEmpty: tag list and
referrers on an empty repository; TestList and TestReferrers for every data set). Plus
pagination Link headers, the catalog and the error paths of listings.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

import httpx
import pytest
from harness.replica import Replica

from tests.datasets import build_datasets, push_dataset
from tests.legacy_data import LegacyData
from tests.oci import (
    MT_OCI_IMAGE,
    MT_OCI_INDEX,
    assert_deleted_or_absent,
    assert_oci_error,
    blob_post_put,
    oci_digest,
    rand_text,
    unique_repo,
)

DATASETS = list(build_datasets())


def referrers(c: httpx.Client, repo: str, subject: str, **params: str) -> httpx.Response:
    """api.ReferrersList: 200, Content-Type exactly the OCI index, a valid index body."""
    r = c.get(f"/v2/{repo}/referrers/{subject}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == MT_OCI_INDEX
    doc = r.json()
    assert doc["mediaType"] == MT_OCI_INDEX
    assert doc["schemaVersion"] == 2
    assert isinstance(doc["manifests"], list)
    return r


def tag_list(c: httpx.Client, repo: str, **params: str) -> list[str]:
    r = c.get(f"/v2/{repo}/tags/list", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["name"] == repo
    tags = doc["tags"]
    assert isinstance(tags, list)
    return tags


# -- 03_discovery_test.go ------------------------------------------------------------------


@dataclass
class DiscoveryState:
    repo: str
    data: LegacyData
    num_tags: int = 0


@pytest.fixture(scope="module")
def disc(registry: Replica) -> DiscoveryState:
    """ "Setup" and "References setup", including each referrer PUT's OCI-Subject."""
    data = LegacyData()
    repo = unique_repo("conformance-discovery")
    subject4 = oci_digest(data.manifests[4])
    with registry.client() as c:
        data.push_blob(c, repo, data.configs[2])
        data.push_blob(c, repo, data.layer)
        for i in range(4):
            data.push_manifest(c, repo, f"test{i}", data.manifests[2])
        assert oci_digest(data.EMPTY_JSON) == (
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        )
        data.push_blob(c, repo, data.EMPTY_JSON)
        data.push_blob(c, repo, data.ref_blob_a)  # before the subject is pushed
        for body, mt in (
            (data.refs_a_config, MT_OCI_IMAGE),
            (data.refs_a_layer, MT_OCI_IMAGE),
            (data.refs_index, MT_OCI_INDEX),
        ):
            r = data.push_manifest(c, repo, oci_digest(body), body, mt)
            assert r.headers["oci-subject"] == subject4
        data.push_blob(c, repo, data.configs[4])
        data.push_blob(c, repo, data.layer)
        data.push_manifest(c, repo, "tagtest0", data.manifests[4])
        data.push_blob(c, repo, data.ref_blob_b)  # after the subject is pushed
        for body in (data.refs_b_config, data.refs_b_layer):
            r = data.push_manifest(c, repo, oci_digest(body), body)
            assert r.headers["oci-subject"] == subject4
        r = data.push_manifest(c, repo, oci_digest(data.refs_c_layer), data.refs_c_layer)
        assert r.headers["oci-subject"] == oci_digest(data.manifests[3])
    return DiscoveryState(repo, data)


def test_list_tags_is_200(client: httpx.Client, disc: DiscoveryState) -> None:
    tags = tag_list(client, disc.repo)
    assert tags == ["tagtest0", "test0", "test1", "test2", "test3"]
    disc.num_tags = len(tags)


def test_list_tags_limited_by_n(client: httpx.Client, disc: DiscoveryState) -> None:
    num = disc.num_tags // 2
    tags = tag_list(client, disc.repo, n=str(num))
    assert len(tags) == num


def test_list_tags_start_set_by_last(client: httpx.Client, disc: DiscoveryState) -> None:
    num = disc.num_tags // 2
    first = tag_list(client, disc.repo, n=str(num))
    rest = tag_list(client, disc.repo, n=str(num), last=first[num - 1])
    assert len(rest) <= num
    assert all(t > first[num - 1] for t in rest)
    assert rest == sorted(tag_list(client, disc.repo))[num : 2 * num]


def test_referrers_of_nonexistent_subject_is_empty(
    client: httpx.Client, disc: DiscoveryState
) -> None:
    r = referrers(client, disc.repo, LegacyData.DUMMY_DIGEST)
    assert r.json()["manifests"] == []


def test_referrers_of_existing_subject(client: httpx.Client, disc: DiscoveryState) -> None:
    r = referrers(client, disc.repo, oci_digest(disc.data.manifests[4]))
    found = r.json()["manifests"]
    assert len(found) == 5
    assert len({d["digest"] for d in found}) == 5
    key = LegacyData.ANNOTATION_KEY
    for d in found:
        assert len(d["annotations"]) == 1
        assert d["annotations"][key] == disc.data.annotations[d["digest"]]
    by_digest = {d["digest"]: d for d in found}
    index = by_digest[oci_digest(disc.data.refs_index)]
    assert index["mediaType"] == MT_OCI_INDEX
    assert index["artifactType"] == LegacyData.REF_TYPE_INDEX
    assert index["size"] == len(disc.data.refs_index)
    a_config = by_digest[oci_digest(disc.data.refs_a_config)]
    assert a_config["artifactType"] == LegacyData.REF_TYPE_A  # the config's media type
    assert a_config["mediaType"] == MT_OCI_IMAGE


def test_referrers_with_artifact_type_filter(client: httpx.Client, disc: DiscoveryState) -> None:
    r = referrers(
        client,
        disc.repo,
        oci_digest(disc.data.manifests[4]),
        artifactType=LegacyData.REF_TYPE_A,
    )
    assert r.headers["oci-filters-applied"] == "artifactType"
    found = r.json()["manifests"]
    assert len(found) == 2
    assert {d["digest"] for d in found} == {
        oci_digest(disc.data.refs_a_config),
        oci_digest(disc.data.refs_a_layer),
    }
    for d in found:
        assert len(d["annotations"]) == 1
        assert d["annotations"][LegacyData.ANNOTATION_KEY] == disc.data.annotations[d["digest"]]


def test_referrers_of_missing_manifest(client: httpx.Client, disc: DiscoveryState) -> None:
    r = referrers(client, disc.repo, oci_digest(disc.data.manifests[3]))
    found = r.json()["manifests"]
    assert [d["digest"] for d in found] == [oci_digest(disc.data.refs_c_layer)]


def test_discovery_teardown(client: httpx.Client, disc: DiscoveryState) -> None:
    data = disc.data
    refs = [
        oci_digest(data.refs_index),
        oci_digest(data.manifests[2]),
        oci_digest(data.manifests[4]),
        oci_digest(data.refs_a_config),
        oci_digest(data.refs_a_layer),
        "tagtest0",
        oci_digest(data.refs_b_config),
        oci_digest(data.refs_b_layer),
        oci_digest(data.refs_c_layer),
    ]
    for ref in refs:
        r = client.delete(f"/v2/{disc.repo}/manifests/{ref}")
        assert_deleted_or_absent(r, 405, 404)
    for blob in (data.configs[2], data.layer):
        r = client.delete(f"/v2/{disc.repo}/blobs/{oci_digest(blob)}")
        assert_deleted_or_absent(r, 405)
    for blob in (data.configs[4], data.ref_blob_a, data.ref_blob_b, data.EMPTY_JSON):
        r = client.delete(f"/v2/{disc.repo}/blobs/{oci_digest(blob)}")
        assert_deleted_or_absent(r, 405, 404)
    # every referrer went with its manifest; the repository has no tags left
    assert referrers(client, disc.repo, oci_digest(data.manifests[4])).json()["manifests"] == []
    assert referrers(client, disc.repo, oci_digest(data.manifests[3])).json()["manifests"] == []
    assert tag_list(client, disc.repo) == []


# -- run.go: TestEmpty, TestList and TestReferrers ------------------------------------------


def test_empty_tag_list(client: httpx.Client) -> None:
    """TestEmptyTagList: a repository never pushed lists as 200 or 404."""
    repo = unique_repo()
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code in (200, 404)
    if r.status_code == 404:
        assert_oci_error(r, 404, "NAME_UNKNOWN")
    else:
        assert r.json()["tags"] == []


def test_empty_referrers(client: httpx.Client) -> None:
    """TestEmptyReferrers: referrers of a random subject in an empty repository."""
    r = referrers(client, unique_repo(), oci_digest(rand_text().encode()))
    assert r.json()["manifests"] == []


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_tag_list(client: httpx.Client, name: str) -> None:
    """TestList: every tag is listed, and `last` splits the sorted list in two."""
    td = build_datasets()[name]
    repo = unique_repo()
    push_dataset(client, repo, td)
    tags = tag_list(client, repo)
    for tag in td.tags:
        if td.tags[tag] not in td.bad_digest:
            assert tag in tags, tag
    assert tags == sorted(tags), "tags are listed in lexical order"
    if len(tags) >= 2:
        end = len(tags) // 2
        last = tags[end - 1]
        partial = tag_list(client, repo, last=last)
        assert partial == tags[end:]


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_referrers(client: httpx.Client, name: str) -> None:
    """TestReferrers: each expected descriptor listed (digest, mediaType, size,
    artifactType, annotations); filtered by each artifactType with OCI-Filters-Applied."""
    td = build_datasets()[name]
    repo = unique_repo()
    push_dataset(client, repo, td)

    def listed(found: list[dict[str, object]], goal: dict[str, object]) -> bool:
        for d in found:
            annotations = d.get("annotations") or {}
            assert isinstance(annotations, dict)
            goal_annotations = goal["annotations"]
            assert isinstance(goal_annotations, dict)
            if (
                d["digest"] == goal["digest"]
                and d["mediaType"] == goal["mediaType"]
                and d["size"] == goal["size"]
                and d.get("artifactType", "") == goal["artifactType"]
                and all(annotations.get(k) == v for k, v in goal_annotations.items())
            ):
                return True
        return False

    for subject, goals in td.referrers.items():
        found = referrers(client, repo, subject).json()["manifests"]
        assert len(found) == len(goals)
        for goal in goals:
            assert listed(found, goal), goal
        for artifact_type in {str(g["artifactType"]) for g in goals}:
            r = referrers(client, repo, subject, artifactType=artifact_type)
            applied = [f.strip() for f in r.headers.get("oci-filters-applied", "").split(",")]
            assert "artifactType" in applied
            found = r.json()["manifests"]
            for goal in goals:
                if goal["artifactType"] == artifact_type:
                    assert listed(found, goal), goal
            for d in found:
                assert d.get("artifactType", "") == artifact_type


# -- more discovery: pagination, catalog, edge cases and error paths ----------------------


def _tagged_repo(client: httpx.Client, tags: list[str]) -> str:
    td = build_datasets()["no-layers"]
    repo = unique_repo()
    push_dataset(client, repo, td)
    digest = td.man_order[-1]
    for tag in tags:
        r = client.put(
            f"/v2/{repo}/manifests/{tag}",
            content=td.manifests[digest],
            headers={"Content-Type": MT_OCI_IMAGE},
        )
        assert r.status_code == 201
    client.delete(f"/v2/{repo}/manifests/no-layers")
    return repo


def test_tag_list_pagination_with_link(client: httpx.Client) -> None:
    names = sorted(["a", "b", "B", "c1", "c10", "c2", "latest", "v1.0", "v1.0-rc", "z_z"])
    repo = _tagged_repo(client, names)
    assert tag_list(client, repo) == names
    seen: list[str] = []
    url: str | None = f"/v2/{repo}/tags/list?n=3"
    while url is not None:
        r = client.get(url)
        assert r.status_code == 200
        page = r.json()["tags"]
        assert len(page) <= 3
        seen += page
        link = r.headers.get("link")
        if link is None:
            break
        assert link.endswith('>; rel="next"')
        url = link[1 : link.index(">")]
        assert url.startswith(f"/v2/{repo}/tags/list?")
    assert seen == names
    assert tag_list(client, repo, n="0") == []
    assert tag_list(client, repo, last="z_z") == []
    assert tag_list(client, repo, last="c") == [t for t in names if t > "c"]


def test_tag_list_of_repository_without_tags(client: httpx.Client) -> None:
    """A repository that has content but no tags lists `"tags": []` with 200."""
    repo = unique_repo()
    body = secrets.token_bytes(32)
    blob_post_put(client, repo, oci_digest(body), body)
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": repo, "tags": []}
    assert b'"tags":[]' in r.content.replace(b" ", b"")
    # and one whose only tag was deleted
    repo = _tagged_repo(client, ["only"])
    assert client.delete(f"/v2/{repo}/manifests/only").status_code == 202
    assert tag_list(client, repo) == []


def test_catalog_pagination(client: httpx.Client) -> None:
    base = f"conformance-catalog-{secrets.token_hex(4)}"
    repos = [f"{base}/r{i}" for i in range(5)]
    for repo in repos:
        body = secrets.token_bytes(8)
        blob_post_put(client, repo, oci_digest(body), body)
    r = client.get("/v2/_catalog")
    assert r.status_code == 200
    listed = r.json()["repositories"]
    assert listed == sorted(listed)
    assert all(repo in listed for repo in repos)
    r = client.get("/v2/_catalog", params={"n": "2", "last": f"{base}/r0"})
    assert r.status_code == 200
    assert r.json()["repositories"] == [f"{base}/r1", f"{base}/r2"]
    assert r.headers["link"] == f'</v2/_catalog?n=2&last={base}%2Fr2>; rel="next"'


def test_referrers_filter_without_match(client: httpx.Client) -> None:
    td = build_datasets()["artifacts-with-subject"]
    repo = unique_repo()
    push_dataset(client, repo, td)
    subject = next(iter(td.referrers))
    r = referrers(client, repo, subject, artifactType="application/vnd.example.none")
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert r.json()["manifests"] == []
    r = referrers(client, repo, subject)
    assert "oci-filters-applied" not in r.headers
    assert "charset" not in r.headers["content-type"]


def test_referrers_follow_deletes(client: httpx.Client) -> None:
    td = build_datasets()["artifacts-with-subject"]
    repo = unique_repo()
    push_dataset(client, repo, td)
    subject, goals = next(iter(td.referrers.items()))
    gone = str(goals[0]["digest"])
    assert client.delete(f"/v2/{repo}/manifests/{gone}").status_code == 202
    found = referrers(client, repo, subject).json()["manifests"]
    assert gone not in {d["digest"] for d in found}
    assert len(found) == len(goals) - 1


def test_error_referrers_invalid_digest(client: httpx.Client) -> None:
    repo = unique_repo()
    for bad in ("sha256:abc", "latest", "sha1:" + "a" * 40):
        assert_oci_error(client.get(f"/v2/{repo}/referrers/{bad}"), 400, "DIGEST_INVALID")


def test_error_name_unknown_and_invalid(client: httpx.Client) -> None:
    assert_oci_error(client.get(f"/v2/{unique_repo()}/tags/list"), 404, "NAME_UNKNOWN")
    assert_oci_error(client.get("/v2/Bad_Name/tags/list"), 400, "NAME_INVALID")
    r = client.get(f"/v2/Bad_Name/referrers/{oci_digest(b'x')}")
    assert_oci_error(r, 400, "NAME_INVALID")


def test_error_pagination_invalid(client: httpx.Client) -> None:
    repo = _tagged_repo(client, ["t"])
    for n in ("abc", "-1", "1.5", "9" * 40):
        r = client.get(f"/v2/{repo}/tags/list", params={"n": n})
        if n == "9" * 40:
            assert r.status_code == 200  # a huge n is capped, never an error
            continue
        assert_oci_error(r, 400, "PAGINATION_NUMBER_INVALID")
        assert_oci_error(
            client.get("/v2/_catalog", params={"n": n}), 400, "PAGINATION_NUMBER_INVALID"
        )


def test_listing_odd_last_values(client: httpx.Client) -> None:
    """Any `last` is a position in the sorted list, never an error."""
    repo = _tagged_repo(client, ["a", "b"])
    for last in ("\u00e9\u00e9", "~", "a" * 300, " ", "%00"):
        r = client.get(f"/v2/{repo}/tags/list", params={"last": last})
        assert r.status_code == 200, last
        json.loads(r.content)
