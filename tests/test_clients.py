"""Real registry clients against a real replica: skopeo, podman and the oras Python package.

Images are built offline with umoci into OCI layouts; no network is used beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness.process import AUTH
from harness.replica import Replica

from tests.oci import OCI_MANIFEST, sha256

pytestmark = pytest.mark.clients

CREDS = f"{AUTH[0]}:{AUTH[1]}"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a client command; fail the test with its output if it fails."""
    if shutil.which(args[0]) is None:
        pytest.fail(f"{args[0]} is not installed; the clients tests need it")
    p = subprocess.run(args, capture_output=True, text=True, timeout=240)
    if p.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def run(*args: str) -> str:
    return run_process(*args).stdout


def repo_name(prefix: str) -> str:
    return f"clients/{prefix}-{uuid.uuid4().hex[:10]}"


# --- OCI layouts ------------------------------------------------------------------------------


def read_blob(layout: Path, digest: str) -> bytes:
    algo, hexpart = digest.split(":", 1)
    data = (layout / "blobs" / algo / hexpart).read_bytes()
    assert sha256(data) == digest, f"blob {digest} in {layout} is corrupt"
    return data


def layout_ref(layout: Path, tag: str) -> dict[str, Any]:
    """The index.json descriptor of `tag` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    found = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(found) == 1, f"{tag} in {index}"
    return dict(found[0])


def build_image(
    layout: Path, tag: str, arch: str, layers: list[dict[str, bytes]], work: Path
) -> str:
    """Build an image of one layer per dict of files with umoci; return its manifest digest."""
    if not (layout / "index.json").exists():
        run("umoci", "init", "--layout", str(layout))
    image = f"{layout}:{tag}"
    run("umoci", "new", "--image", image)
    bundle = work / f"bundle-{tag}"
    run("umoci", "unpack", "--rootless", "--image", image, str(bundle))
    for files in layers:
        for name, content in files.items():
            path = bundle / "rootfs" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        # Without --refresh-bundle a second repack would replace the first layer.
        run("umoci", "repack", "--refresh-bundle", "--image", image, str(bundle))
    run("umoci", "config", "--image", image, "--architecture", arch, "--os", "linux")
    desc = layout_ref(layout, tag)
    manifest = json.loads(read_blob(layout, desc["digest"]))
    assert len(manifest["layers"]) == len(layers)
    return str(desc["digest"])


def add_index(layout: Path, tag: str, children: list[tuple[str, str]]) -> tuple[str, bytes]:
    """Write an OCI index of (manifest digest, architecture) and tag it in the layout.

    umoci cannot write an index, so the blob and its index.json entry are written by hand.
    """
    descriptors = []
    for digest, arch in children:
        size = len(read_blob(layout, digest))
        descriptors.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors},
        separators=(",", ":"),
    ).encode()
    digest = sha256(body)
    (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(body)
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": len(body),
            "annotations": {REF_NAME: tag},
        }
    )
    index_path.write_text(json.dumps(index))
    return digest, body


def image_blobs(layout: Path, manifest_digest: str) -> tuple[str, list[str]]:
    """(config digest, layer digests) of a manifest in a layout; every blob must be there."""
    manifest = json.loads(read_blob(layout, manifest_digest))
    read_blob(layout, manifest["config"]["digest"])
    layers = [layer["digest"] for layer in manifest["layers"]]
    for layer in layers:
        read_blob(layout, layer)
    return manifest["config"]["digest"], layers


# --- skopeo ---------------------------------------------------------------------------------


def skopeo_copy(
    src: str, dest: str, *extra: str, work: Path, debug: list[str] | None = None
) -> str:
    """skopeo copy with credentials on the registry side(s); return the written digest.

    With `debug`, skopeo logs its requests and the log is appended to that list.
    """
    args = ["skopeo", *(["--debug"] if debug is not None else []), "copy", *extra]
    if src.startswith("docker://"):
        args += ["--src-tls-verify=false", "--src-creds", CREDS]
    if dest.startswith("docker://"):
        args += ["--dest-tls-verify=false", "--dest-creds", CREDS]
    digestfile = work / f"digest-{uuid.uuid4().hex}"
    p = run_process(*args, "--digestfile", str(digestfile), src, dest)
    if debug is not None:
        debug.append(p.stderr)
    return digestfile.read_text().strip()


def skopeo(*args: str) -> str:
    return run("skopeo", args[0], "--tls-verify=false", "--creds", CREDS, *args[1:])


def test_skopeo_two_layer_image_round_trip(registry: Replica, tmp_path: Path) -> None:
    src = tmp_path / "src"
    digest = build_image(
        src,
        "v1",
        "amd64",
        [
            {"etc/hello.txt": b"hello from layer one\n", "bin/tool": b"\x7fELF not really"},
            {"etc/hello.txt": b"changed in layer two\n", "srv/data.bin": bytes(range(256)) * 64},
        ],
        tmp_path,
    )
    manifest_bytes = read_blob(src, digest)
    config_digest, layers = image_blobs(src, digest)
    assert len(layers) == 2
    repo = repo_name("skopeo")
    ref = f"docker://{registry.host}/{repo}"

    # Copy in: the registry keeps the manifest bytes, so the digest is unchanged.
    assert skopeo_copy(f"oci:{src}:v1", f"{ref}:v1", work=tmp_path) == digest

    raw = skopeo("inspect", "--raw", f"{ref}:v1").encode()
    assert raw == manifest_bytes
    assert sha256(raw) == digest
    config_raw = skopeo("inspect", "--config", "--raw", f"{ref}:v1").encode()
    assert config_raw == read_blob(src, config_digest)
    info = json.loads(skopeo("inspect", f"{ref}:v1"))
    assert info["Digest"] == digest
    assert info["Layers"] == layers
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["RepoTags"] == ["v1"]

    # A second tag, copied registry to registry, and a copy into another repository, for
    # which skopeo mounts the blobs from the first repository instead of uploading them.
    assert skopeo_copy(f"{ref}:v1", f"{ref}:v2", work=tmp_path) == digest
    other = f"docker://{registry.host}/{repo}-other"
    log: list[str] = []
    assert skopeo_copy(f"{ref}:v1", f"{other}:copy", work=tmp_path, debug=log) == digest
    if "mount=" not in log[0]:
        # skopeo mounts only what its blob-info cache recorded: one sqlite file for every
        # skopeo on the host (as root), which a copy running beside the other test workers'
        # may find locked; it then uploads instead (seen once in a full run). Once more.
        other = f"docker://{registry.host}/{repo}-again"
        assert skopeo_copy(f"{ref}:v1", f"{other}:copy", work=tmp_path, debug=log) == digest
    cache_lines = [line for line in log[-1].splitlines() if "cache" in line.lower()][:5]
    for blob in layers:
        assert f"mount=sha256%3A{blob.split(':', 1)[1]}" in log[-1], cache_lines
    assert log[-1].count("... mount OK") >= len(layers)
    tags = json.loads(skopeo("list-tags", ref))
    assert tags["Repository"] == f"{registry.host}/{repo}"
    assert sorted(tags["Tags"]) == ["v1", "v2"]
    assert json.loads(skopeo("list-tags", other))["Tags"] == [
        "copy"
    ]  # (the repository mounted into)

    # Copy out to a new layout: same manifest bytes, same config and layer blobs.
    out = tmp_path / "out"
    assert skopeo_copy(f"{ref}:v2", f"oci:{out}:back", work=tmp_path) == digest
    desc = layout_ref(out, "back")
    assert desc["digest"] == digest
    assert read_blob(out, digest) == manifest_bytes
    assert image_blobs(out, digest) == (config_digest, layers)
    for blob in [config_digest, *layers]:
        assert read_blob(out, blob) == read_blob(src, blob)

    # Delete: the manifest is gone, by digest and by either tag; the other repository keeps it.
    skopeo("delete", f"{ref}:v1")
    with registry.client() as c:
        for reference in (digest, "v1", "v2"):
            r = c.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT})
            assert r.status_code == 404, reference
            assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert c.head(f"/v2/{repo}/manifests/{digest}").status_code == 404
        r = c.get(f"/v2/{repo}-other/manifests/copy", headers={"Accept": ACCEPT})
        assert r.status_code == 200
        assert r.content == manifest_bytes
    assert json.loads(skopeo("list-tags", ref))["Tags"] in ([], None)


def test_skopeo_multi_arch_index(registry: Replica, tmp_path: Path) -> None:
    src = tmp_path / "src"
    children = []
    for arch in ("amd64", "arm64"):
        d = build_image(
            src,
            arch,
            arch,
            [{"arch.txt": arch.encode()}, {f"only-{arch}": b"x" * 1000}],
            tmp_path,
        )
        children.append((d, arch))
    assert children[0][0] != children[1][0]
    index_digest, index_bytes = add_index(src, "multi", children)
    repo = repo_name("multiarch")
    ref = f"docker://{registry.host}/{repo}"

    assert skopeo_copy(f"oci:{src}:multi", f"{ref}:multi", "--all", work=tmp_path) == index_digest

    raw = skopeo("inspect", "--raw", f"{ref}:multi").encode()
    assert raw == index_bytes
    with registry.client() as c:
        r = c.get(f"/v2/{repo}/manifests/multi", headers={"Accept": ACCEPT})
        assert r.status_code == 200
        assert r.headers["content-type"] == OCI_INDEX
        assert r.headers["docker-content-digest"] == index_digest
        assert r.content == index_bytes
        for d, _ in children:
            r = c.get(f"/v2/{repo}/manifests/{d}", headers={"Accept": ACCEPT})
            assert r.status_code == 200
            assert r.content == read_blob(src, d)
    # Each platform resolves through the index to its own image (skopeo reports the digest
    # of what the tag names, the index).
    for d, arch in children:
        info = json.loads(skopeo("inspect", "--override-arch", arch, f"{ref}:multi"))
        assert info["Digest"] == index_digest
        assert info["Architecture"] == arch
        assert info["Layers"] == image_blobs(src, d)[1]

    out = tmp_path / "out"
    assert skopeo_copy(f"{ref}:multi", f"oci:{out}:multi", "--all", work=tmp_path) == index_digest
    assert layout_ref(out, "multi")["digest"] == index_digest
    assert read_blob(out, index_digest) == index_bytes
    for d, _ in children:
        assert read_blob(out, d) == read_blob(src, d)
        assert image_blobs(out, d) == image_blobs(src, d)


# --- podman ---------------------------------------------------------------------------------


def test_podman_push_pull(
    registry: Replica, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    src = tmp_path / "src"
    files = {"greeting.txt": b"ahoy from podman\n", "nested/dir/file": b"deep\n"}
    digest = build_image(
        src,
        "v1",
        "amd64",
        [{"greeting.txt": files["greeting.txt"]}, {"nested/dir/file": files["nested/dir/file"]}],
        tmp_path,
    )
    config_digest, _ = image_blobs(src, digest)
    config = json.loads(read_blob(src, config_digest))
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == 2

    storage = tmp_path / "podman"
    # podman refuses a runroot longer than 50 characters: pytest's tmp paths are too long.
    runroot = Path(tempfile.mkdtemp(prefix="moorage-podman-"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    podman_base = [
        "podman",
        "--root",
        str(storage / "root"),
        "--runroot",
        str(runroot),
        "--tmpdir",
        str(storage / "tmp"),
        "--storage-driver",
        "vfs",
    ]

    def podman(*args: str) -> str:
        return run(*podman_base, *args)

    def exists(image: str) -> bool:
        p = subprocess.run([*podman_base, "image", "exists", image], capture_output=True)
        return p.returncode == 0

    # Import into podman storage from the layout (no network here).
    image_id = podman("pull", f"oci:{src}:v1").strip().splitlines()[-1]
    assert f"sha256:{image_id}" == config_digest
    repo = repo_name("podman")
    ref = f"{registry.host}/{repo}:v1"
    podman("tag", image_id, ref)

    digestfile = tmp_path / "pushed-digest"
    podman("push", "--tls-verify=false", "--creds", CREDS, "--digestfile", str(digestfile), ref)
    pushed = digestfile.read_text().strip()

    # podman recompresses layers, but the config (and so the diff ids) is unchanged.
    with registry.client() as c:
        r = c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": ACCEPT})
        assert r.status_code == 200
        assert r.headers["docker-content-digest"] == pushed == sha256(r.content)
        manifest = r.json()
        assert manifest["config"]["digest"] == config_digest
        assert len(manifest["layers"]) == 2
        for layer in manifest["layers"]:
            blob = c.get(f"/v2/{repo}/blobs/{layer['digest']}")
            assert blob.status_code == 200
            assert sha256(blob.content) == layer["digest"]
            assert len(blob.content) == layer["size"]
        stored_config = c.get(f"/v2/{repo}/blobs/{config_digest}").content
        assert stored_config == read_blob(src, config_digest)

    # Remove everything locally, then pull it back from the registry.
    podman("rmi", "--force", image_id)
    assert not exists(ref)
    assert podman("images", "--quiet", "--all").strip() == ""
    pulled_id = podman("pull", "--tls-verify=false", "--creds", CREDS, ref).strip().splitlines()[-1]
    assert pulled_id == image_id
    assert exists(ref)

    [info] = json.loads(podman("image", "inspect", ref))
    assert f"sha256:{info['Id']}" == config_digest
    assert info["Digest"] == pushed
    assert info["RootFS"]["Layers"] == diff_ids
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert f"{registry.host}/{repo}@{pushed}" in info["RepoDigests"]

    # The files are in the pulled image's root filesystem.
    rootfs = Path(podman("image", "mount", ref).strip())
    try:
        for name, content in files.items():
            assert (rootfs / name).read_bytes() == content
    finally:
        podman("image", "unmount", ref)


# --- oras -----------------------------------------------------------------------------------


def test_oras_artifact_and_referrers(
    registry: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oras.client
    import oras.oci

    # oras reads docker credentials from DOCKER_CONFIG; keep it away from the host's.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # oras only pushes paths under the working directory
    contents = {
        "readme.md": b"# an artifact\n",
        "payload.bin": bytes(range(256)) * 300,
    }
    for name, data in contents.items():
        (work / name).write_bytes(data)

    client = oras.client.OrasClient(hostname=registry.host, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(*AUTH)
    repo = repo_name("oras")
    target = f"{registry.host}/{repo}:v1"

    r = client.push(
        target, files=list(contents), manifest_annotations={"org.example.kind": "bundle"}
    )
    assert r.status_code == 201
    subject_digest = r.headers["Docker-Content-Digest"]

    manifest = client.get_manifest(target)
    assert manifest["annotations"] == {"org.example.kind": "bundle"}
    titles = {
        layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
        for layer in manifest["layers"]
    }
    assert titles == {name: sha256(data) for name, data in contents.items()}

    out = tmp_path / "pulled"
    pulled = client.pull(target, outdir=str(out))
    assert sorted(Path(p).name for p in pulled) == sorted(contents)
    for name, data in contents.items():
        assert (out / name).read_bytes() == data

    with registry.client() as c:
        r = c.get(f"/v2/{repo}/manifests/{subject_digest}", headers={"Accept": ACCEPT})
        assert r.status_code == 200
        assert sha256(r.content) == subject_digest
        subject = oras.oci.Subject(
            mediaType=OCI_MANIFEST, digest=subject_digest, size=len(r.content)
        )

    # A signature-like referrer through oras: its artifactType is its config's media type.
    (work / "sig.json").write_bytes(b'{"signed": true}')
    (work / "sig-config.json").write_bytes(b'{"signer": "tests"}')
    sig_type = "application/vnd.example.signature.v1+json"
    r = client.push(
        f"{registry.host}/{repo}:sig",
        files=["sig.json"],
        manifest_config=f"sig-config.json:{sig_type}",
        manifest_annotations={"org.example.signed-by": "tests"},
        subject=subject,
    )
    assert r.status_code == 201
    assert r.headers["OCI-Subject"] == subject_digest
    sig_digest = r.headers["Docker-Content-Digest"]
    with registry.client() as c:
        sig_size = len(
            c.get(f"/v2/{repo}/manifests/{sig_digest}", headers={"Accept": ACCEPT}).content
        )

    # An SBOM-like referrer with an explicit artifactType, by hand (oras cannot set one).
    sbom_type = "application/vnd.example.sbom.v1+json"
    sbom = b'{"packages": []}'
    sbom_manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": sbom_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(b"{}"),
                "size": 2,
            },
            "layers": [{"mediaType": sbom_type, "digest": sha256(sbom), "size": len(sbom)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.size},
            "annotations": {"org.example.tool": "hand"},
        }
    ).encode()
    sbom_digest = sha256(sbom_manifest)

    with registry.client() as c:
        r = c.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(sbom)}", content=sbom)
        assert r.status_code == 201
        r = c.put(
            f"/v2/{repo}/manifests/{sbom_digest}",
            content=sbom_manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert r.headers["OCI-Subject"] == subject_digest

        r = c.get(f"/v2/{repo}/referrers/{subject_digest}")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(OCI_INDEX)
        index = r.json()
        assert index["schemaVersion"] == 2
        assert index["mediaType"] == OCI_INDEX
        by_digest = {m["digest"]: m for m in index["manifests"]}
        assert by_digest == {
            sig_digest: {
                "mediaType": OCI_MANIFEST,
                "digest": sig_digest,
                "size": sig_size,
                "artifactType": sig_type,
                "annotations": {"org.example.signed-by": "tests"},
            },
            sbom_digest: {
                "mediaType": OCI_MANIFEST,
                "digest": sbom_digest,
                "size": len(sbom_manifest),
                "artifactType": sbom_type,
                "annotations": {"org.example.tool": "hand"},
            },
        }

        for artifact_type, expected in ((sig_type, sig_digest), (sbom_type, sbom_digest)):
            r = c.get(
                f"/v2/{repo}/referrers/{subject_digest}", params={"artifactType": artifact_type}
            )
            assert r.status_code == 200
            assert r.headers["OCI-Filters-Applied"] == "artifactType"
            assert [m["digest"] for m in r.json()["manifests"]] == [expected]
        r = c.get(
            f"/v2/{repo}/referrers/{subject_digest}",
            params={"artifactType": "application/vnd.example.none"},
        )
        assert r.status_code == 200
        assert r.json()["manifests"] == []

        # The referrers are not referrers of anything else.
        r = c.get(f"/v2/{repo}/referrers/{sig_digest}")
        assert r.status_code == 200
        assert r.json()["manifests"] == []

    # The referrer pushed through oras pulls back through oras too.
    sig_out = tmp_path / "sig-out"
    client.pull(f"{registry.host}/{repo}:sig", outdir=str(sig_out))
    assert (sig_out / "sig.json").read_bytes() == b'{"signed": true}'
