"""The web UI in a real browser (Playwright driving the system's Chromium) against a real
3-replica cluster: sign in, the Cluster page healthy then replicas-unhealthy with the exact
remove command (brought by its event stream), a multi-arch image and its referrers,
deleting a tag and a manifest by digest, signing out; what a
user without permission sees; CSRF-less and unauthenticated requests refused (httpx).

The tests share one module-scoped cluster and run in file order (replicas are stopped
near the end). Screenshots go to docs/screenshots/ (the README shows them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser import axe_clean, chromium, sign_in
from tests.cluster import AUTH, Cluster, cluster_of
from tests.datasets import build_datasets, push_dataset
from tests.oci import MT_OCI_EMPTY, MT_OCI_IMAGE, blob_post_put, manifest_put, oci_digest

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
REPO = "ui/multiarch"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"
OUTSIDER = ("outsider", "outsider-password-1234")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(3, tmp_path_factory.mktemp("ui")) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def admin(browser: Browser, cluster: Cluster) -> Iterator[Page]:
    """The admin's browser tab, signed in by the first test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def image(cluster: Cluster) -> dict[str, str]:
    """A multi-arch image (an OCI index of two platforms) and an SBOM that refers to it."""
    td = build_datasets()["index"]
    with cluster.nodes[0].client() as c:
        push_dataset(c, REPO, td)
        index = td.tags["index"]
        manifest_put(c, REPO, "extra", index, td.manifests[index])  # a tag to delete
        layer = b'{"sbom": "example"}'
        blob_post_put(c, REPO, oci_digest(layer), layer)
        blob_post_put(c, REPO, oci_digest(b"{}"), b"{}")
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_OCI_IMAGE,
                "artifactType": SBOM_TYPE,
                "config": {"mediaType": MT_OCI_EMPTY, "digest": oci_digest(b"{}"), "size": 2},
                "layers": [{"mediaType": SBOM_TYPE, "digest": oci_digest(layer), "size": 19}],
                "subject": {
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": index,
                    "size": len(td.manifests[index]),
                },
            }
        ).encode()
        sbom = oci_digest(body)
        manifest_put(c, REPO, sbom, sbom, body)
    return {"index": index, "sbom": sbom}


def _session_cookies(page: Page) -> dict[str, str]:
    context: BrowserContext = page.context
    return {str(c["name"]): str(c["value"]) for c in context.cookies()}


def test_unauthenticated_access_is_redirected_or_refused(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.nodes[1].url) as c:
        r = c.get("/ui/cluster")
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/signin?next=%2Fui%2Fcluster"
        assert c.get("/ui/cluster.json").status_code == 401
        r = c.post("/ui/delete-tag", data={"name": REPO, "tag": "extra", "csrf": "x"})
        assert r.status_code == 303
        assert r.headers["location"].startswith("/ui/signin")
        # the sign-in form itself needs its own CSRF cookie
        r = c.post("/ui/signin", data={"username": AUTH[0], "password": AUTH[1], "csrf": "x"})
        assert r.status_code == 403
        assert "moorage_session" not in r.cookies
        r = c.get("/ui/signin")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"


def test_sign_in_shows_the_healthy_cluster(cluster: Cluster, admin: Page) -> None:
    node = cluster.nodes[0]
    sign_in(admin, node, AUTH, "/ui/cluster")
    expect(admin).to_have_url(node.url + "/ui/cluster")
    expect(admin.locator("#scenario")).to_have_text("healthy")
    expect(admin.locator("#quorum")).to_have_text("quorum 3/3, needs 2")
    expect(admin.locator("#replicas tr")).to_have_count(3)
    for n in cluster.nodes:
        expect(admin.locator("#replicas")).to_contain_text(n.replica_id)
    cookie = next(c for c in admin.context.cookies() if c["name"] == "moorage_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=str(SCREENSHOTS / "cluster.png"), full_page=True)
    axe_clean(admin)


def test_browse_to_a_multi_arch_image_and_its_referrers(
    cluster: Cluster, admin: Page, image: dict[str, str]
) -> None:
    admin.get_by_role("link", name="Repositories").click()
    admin.get_by_label("Search repositories").fill("multi")
    admin.get_by_label("contain it").check()
    admin.get_by_role("button", name="Search").click()
    axe_clean(admin)
    admin.get_by_role("link", name=REPO).click()
    expect(admin.get_by_role("heading", name=REPO)).to_be_visible()
    tags = admin.locator("table").filter(has_text="Tags")
    expect(tags).to_contain_text(image["index"])
    expect(tags).to_contain_text("application/vnd.oci.image.index.v1+json")
    expect(tags).to_contain_text(f"podman pull 127.0.0.1:{cluster.nodes[0].url.rsplit(':')[-1]}")
    admin.screenshot(path=str(SCREENSHOTS / "repository.png"), full_page=True)
    axe_clean(admin)
    admin.get_by_role("link", name="index", exact=True).click()
    platforms = admin.locator("table").filter(has_text="Platforms")
    expect(platforms.locator("tbody tr")).to_have_count(2)
    referrers = admin.locator("table").filter(has_text="Referrers")
    expect(referrers).to_contain_text(SBOM_TYPE)
    expect(referrers).to_contain_text(image["sbom"])
    expect(admin.locator("#pull")).to_contain_text(f"{REPO}@{image['index']}")
    admin.screenshot(path=str(SCREENSHOTS / "manifest.png"), full_page=True)
    axe_clean(admin)


def test_a_post_without_the_csrf_token_is_refused(cluster: Cluster, admin: Page) -> None:
    node = cluster.nodes[0]
    cookies = {"moorage_session": _session_cookies(admin)["moorage_session"]}
    with httpx.Client(base_url=node.url, cookies=cookies) as c:
        for form in ({"name": REPO, "tag": "extra"}, {"name": REPO, "tag": "extra", "csrf": "no"}):
            r = c.post("/ui/delete-tag", data=form)
            assert r.status_code == 403, r.text
            assert "CSRF" in r.text
    with node.client() as c:
        assert c.head(f"/v2/{REPO}/manifests/extra").status_code == 200
    # the session is signed with a key from the cluster secret: every replica honours it
    with httpx.Client(base_url=cluster.nodes[1].url, cookies=cookies) as c:
        r = c.get("/ui/cluster.json")
        assert r.status_code == 200, r.text
        assert r.json()["replica"] == cluster.nodes[1].replica_id


def test_delete_a_tag_after_confirming(cluster: Cluster, admin: Page) -> None:
    admin.goto(cluster.nodes[0].url + f"/ui/repository?name={REPO}")
    admin.get_by_role("link", name="Delete tag extra").click()
    expect(admin.get_by_role("heading")).to_have_text(f"Delete tag extra of {REPO}?")
    axe_clean(admin)
    admin.get_by_role("button", name="Delete tag extra").click()
    expect(admin.get_by_role("status")).to_have_text("Tag extra deleted.")
    with cluster.nodes[2].client() as c:
        assert c.head(f"/v2/{REPO}/manifests/extra").status_code == 404
        assert c.head(f"/v2/{REPO}/manifests/index").status_code == 200


def test_delete_a_manifest_by_digest_after_confirming(
    cluster: Cluster, admin: Page, image: dict[str, str]
) -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_IMAGE,
            "config": {"mediaType": MT_OCI_EMPTY, "digest": oci_digest(b"{}"), "size": 2},
            "layers": [],
            "annotations": {"purpose": "deleted by digest in the browser test"},
        }
    ).encode()
    digest = oci_digest(body)
    with cluster.nodes[0].client() as c:
        manifest_put(c, REPO, "doomed", digest, body)
    admin.goto(cluster.nodes[0].url + f"/ui/repository?name={REPO}")
    admin.get_by_role("link", name="doomed", exact=True).click()
    admin.get_by_role("link", name="Delete this manifest…").click()
    expect(admin.get_by_role("heading")).to_have_text(f"Delete manifest {digest} of {REPO}?")
    axe_clean(admin)
    admin.get_by_role("button", name=f"Delete manifest {digest}").click()
    expect(admin.get_by_role("status")).to_have_text(f"Manifest {digest} deleted.")
    with cluster.nodes[1].client() as c:
        assert c.head(f"/v2/{REPO}/manifests/{digest}").status_code == 404
        assert c.head(f"/v2/{REPO}/manifests/doomed").status_code == 404
        assert c.head(f"/v2/{REPO}/manifests/{image['index']}").status_code == 200


def test_a_user_without_permission_sees_no_repository_and_no_admin_page(
    cluster: Cluster, browser: Browser, image: dict[str, str]
) -> None:
    node = cluster.nodes[1]
    with node.client() as c:
        r = c.post("/api/v0/users", json={"name": OUTSIDER[0], "password": OUTSIDER[1]})
        assert r.status_code in (200, 201), r.text
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, node, OUTSIDER)
        expect(page).to_have_url(node.url + "/ui/repositories")
        expect(page.locator("main")).to_contain_text("No repositories that you may pull")
        expect(page.get_by_role("link", name="Cluster")).to_have_count(0)
        page.goto(node.url + "/ui/cluster")
        expect(page.get_by_role("alert")).to_contain_text("for cluster admins")
        page.goto(node.url + f"/ui/repository?name={REPO}")
        expect(page.get_by_role("alert")).to_contain_text("no repository")
        page.goto(node.url + f"/ui/manifest?name={REPO}&ref=index")
        expect(page.get_by_role("alert")).to_contain_text("no repository")
        cookies = {"moorage_session": _session_cookies(page)["moorage_session"]}
        with httpx.Client(base_url=node.url, cookies=cookies) as c:
            assert c.get("/ui/cluster.json").status_code == 403
    finally:
        context.close()


def _next_block(status_output: str) -> list[str]:
    lines = status_output.splitlines()
    block = lines[lines.index("next:") :]
    # the CLI names itself by its path when `moorage` on PATH is not it (guidance.program)
    return [re.sub(r"^\S*moorage ", "moorage ", line) for line in block]


def test_a_stopped_replica_turns_the_page_to_replicas_unhealthy(
    cluster: Cluster, admin: Page
) -> None:
    admin.goto(cluster.nodes[0].url + "/ui/cluster")
    expect(admin.locator("#scenario")).to_have_text("healthy")
    expect(admin.locator("#cluster")).to_have_attribute("data-live", "stream")
    expect(admin.locator("#updated")).to_contain_text("; live.")
    gone = cluster.nodes[2]
    cluster.stop(gone)
    # no reload: the server-sent events bring the change
    expect(admin.locator("#scenario")).to_have_text("replicas-unhealthy", timeout=60_000)
    expect(admin.locator("#cluster")).to_have_attribute("data-live", "stream")
    remove = re.compile(rf"\nmoorage remove --existing \S+ --replica-id {gone.replica_id}\n")
    expect(admin.locator("#next")).to_contain_text(remove)
    out = cluster.cli("status", "--existing", cluster.urls(cluster.nodes[:2]), check=False)
    assert out.returncode == 10, out.stdout + out.stderr
    shown = admin.locator("#next").inner_text().splitlines()
    assert shown == _next_block(out.stdout)
    admin.screenshot(path=str(SCREENSHOTS / "cluster-unhealthy.png"), full_page=True)


def test_the_page_keeps_working_on_a_replica_that_lost_quorum(
    cluster: Cluster, admin: Page
) -> None:
    cluster.stop(cluster.nodes[1])  # two of three down: no leader
    expect(admin.locator("#scenario")).to_have_text("quorum-lost", timeout=90_000)
    # the replica's own health check finds it read-only a few seconds later (it polls)
    read_only = "serves pulls from its local copy"
    expect(admin.locator("#problem")).to_contain_text(read_only, timeout=60_000)
    expect(admin.locator("#next")).to_contain_text("moorage emergency-repair")
    admin.reload()  # a whole page too, not only the polled JSON
    expect(admin.locator("#scenario")).to_have_text("quorum-lost")
    expect(admin.locator("#cluster")).to_have_attribute("data-live", "stream", timeout=60_000)
    # a change is refused on the read-only replica, with a page that says where to go
    cookies = {"moorage_session": _session_cookies(admin)["moorage_session"]}
    csrf = admin.locator("form.signout input[name=csrf]").get_attribute("value") or ""
    with httpx.Client(base_url=cluster.nodes[0].url, cookies=cookies, timeout=60) as c:
        form = {"csrf": csrf, "name": REPO, "digest": oci_digest(b"not stored")}
        r = c.post("/ui/delete-manifest", data=form)
        assert r.status_code == 503, r.text
        assert "read-only" in r.text
    admin.screenshot(path=str(SCREENSHOTS / "cluster-quorum-lost.png"), full_page=True)
    admin.goto(cluster.nodes[0].url + f"/ui/manifest?name={REPO}&ref=index")
    expect(admin.locator("table").filter(has_text="Platforms").locator("tbody tr")).to_have_count(2)


def test_sign_out(cluster: Cluster, admin: Page) -> None:
    # A sign-out is recorded in etcd (every replica then refuses the cookie): quorum back first.
    for node in cluster.nodes[1:]:
        cluster.start(node)
    cluster.wait_status("healthy")
    admin.goto(cluster.nodes[0].url + "/ui/cluster")
    admin.get_by_role("button", name="Sign out").click()
    expect(admin).to_have_url(re.compile(r"/ui/signin$"))
    admin.goto(cluster.nodes[0].url + "/ui/cluster")
    expect(admin).to_have_url(re.compile(r"/ui/signin\?next="))
    axe_clean(admin)
