"""Bundles open in the runtimes at the far side: `docker load` (20.10, reading manifest.json),
`ctr images import` (containerd 1.6, as k3s/RKE2 import their airgap images) and `podman load`
(4.3), all from the Debian packages, rootful, with private roots (tests/support/runtimes.py).

Each test pulls from the real registry (a signed two-platform index with an SBOM, and a
Docker-typed single-platform image), hands the bundle to the runtime unchanged, and checks the
names, tags, image IDs (the source config digests) and platforms the runtime reports.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import imagegen as ig
from tests.support.oracle import check_layout, mirror_ok, run, run_mirror, skopeo
from tests.support.pusher import get_manifest, push_image
from tests.support.registry import Registry
from tests.support.runtimes import CTR, DOCKER, Containerd, Dockerd, Podman
from tests.test_foreign import ALLOW_LOOPBACK, make_foreign, push_foreign
from tests.test_referrers import seed

pytestmark = pytest.mark.slow  # dockerd, containerd and podman started per test

REF = "org.opencontainers.image.ref.name"


def blob(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    with Dockerd(tmp_path_factory.mktemp("dockerd")) as d:
        yield d


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    with Containerd(tmp_path_factory.mktemp("containerd")) as c:
        yield c


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    p = Podman(tmp_path / "podman")
    yield p
    p.stop()


@dataclass
class Seeded:
    signed: str  # reference of the signed two-platform OCI index (amd64, arm64)
    index: ig.Index
    imgs: list[ig.Image]  # amd64, arm64
    single: str  # reference of a Docker-typed amd64 image
    single_img: ig.Image
    sig_tag: str


def seed_both(reg: Registry, repo: str, rng) -> Seeded:
    index, imgs, _sig, tag, _sbom = seed(reg.url, repo, rng, ec.generate_private_key(
        ec.SECP256R1()))
    single = ig.make_image(rng, ig.AMD64, fmt="docker")
    push_image(reg.url, repo + "-single", single, tags=["2"])
    return Seeded(f"{reg.host}/{repo}:1.0", index, imgs, f"{reg.host}/{repo}-single:2", single,
                  tag)


def pull(tmp_path: Path, name: str, *args: object) -> Path:
    out = tmp_path / name
    mirror_ok("pull", *args, "-o", out, "--cache", tmp_path / "cache", "-q")
    return out


def test_docker_load_opens_a_default_bundle(dockerd, src_registry, repo_name, rng, tmp_path):
    s = seed_both(src_registry, repo_name, rng)
    bundle = pull(tmp_path, "b.tar", s.signed, s.single)
    out = dockerd.cli("load", "-i", bundle).stdout
    assert f"Loaded image: {s.signed}" in out, out
    amd, arm = s.imgs
    got = dockerd.image(s.signed)
    assert got["Id"] == amd.config.digest  # the image ID is the source config digest
    assert (got["Os"], got["Architecture"]) == ("linux", "amd64")
    assert dockerd.image(arm.config.digest)["Architecture"] == "arm64"  # loaded, untagged
    assert dockerd.image(s.single)["Id"] == s.single_img.config.digest
    assert not any(s.sig_tag in line for line in out.splitlines())


def test_manifest_json_is_docker_saves(src_registry, repo_name, rng, tmp_path):
    """manifest.json as `docker save` (25+) writes it: Go's compact JSON and a newline,
    blob paths, the tag on amd64, arm64 untagged (null); no signature or SBOM in it."""
    s = seed_both(src_registry, repo_name, rng)
    lay = check_layout(pull(tmp_path, "b.tar", s.signed, s.single))
    data = lay.data["manifest.json"]
    doc = json.loads(data)
    assert data == json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def item(img: ig.Image, tags: list[str] | None) -> dict:
        return {"Config": blob(img.config.digest), "RepoTags": tags,
                "Layers": [blob(la.digest) for la in img.layers]}

    assert doc == [item(s.single_img, [s.single]), item(s.imgs[0], [s.signed]),
                   item(s.imgs[1], None)]
    assert [e["annotations"][REF] for e in lay.index["manifests"]] == [s.single, s.signed]


def test_docker_load_opens_a_one_platform_bundle(dockerd, src_registry, repo_name, rng,
                                                 tmp_path):
    s = seed_both(src_registry, repo_name, rng)
    bundle = pull(tmp_path, "arm.tar", s.signed, "--platform", "linux/arm64")
    dockerd.cli("load", "-i", bundle)
    got = dockerd.image(s.signed)
    assert got["Id"] == s.imgs[1].config.digest
    assert got["Architecture"] == "arm64"


def test_ctr_import_opens_a_default_bundle(containerd, src_registry, repo_name, rng,
                                           tmp_path):
    s = seed_both(src_registry, repo_name, rng)
    bundle = pull(tmp_path, "b.tar", s.signed, s.single)
    proc = containerd.import_(bundle, check=False)
    assert proc.returncode == 0, proc.stderr
    images = containerd.images()
    assert images[s.signed]["digest"] == s.index.digest  # the source index, byte for byte
    assert images[s.signed]["platforms"] == "linux/amd64,linux/arm64"
    assert images[s.single]["digest"] == s.single_img.digest
    assert not [n for n in images if s.sig_tag in n or "@" in n], images  # no referrer image
    # unpacked for the host: the snapshot chain of the amd64 image is there
    containerd.ctr("images", "check")
    snaps = containerd.ctr("snapshots", "--snapshotter", "native", "ls").stdout
    assert len(snaps.splitlines()) > 1, snaps


def test_ctr_import_all_platforms_of_a_foreign_platform_bundle(containerd, src_registry,
                                                               repo_name, rng, tmp_path):
    s = seed_both(src_registry, repo_name, rng)
    bundle = pull(tmp_path, "arm.tar", s.signed, "--platform", "linux/arm64")
    # README: --all-platforms alone still unpacks for the host only, and fails on this image
    alone = containerd.import_(bundle, "--all-platforms", check=False)
    assert alone.returncode == 1 and "no match for platform" in alone.stderr, alone.stderr
    containerd.import_(bundle, "--all-platforms", "--no-unpack")
    img = containerd.images()[s.signed]
    assert img["platforms"] == "linux/arm64"
    assert containerd.blob(s.imgs[1].config.digest) == s.imgs[1].config.data


def test_podman_load_opens_a_default_bundle(podman, src_registry, repo_name, rng, tmp_path):
    s = seed_both(src_registry, repo_name, rng)
    bundle = pull(tmp_path, "b.tar", s.signed, s.single)
    podman.cli("load", "-i", bundle)
    got = podman.image(s.signed)
    assert "sha256:" + got["Id"] == s.imgs[0].config.digest
    assert got["Architecture"] == "amd64"
    assert "sha256:" + podman.image(s.single)["Id"] == s.single_img.config.digest


def test_podman_load_opens_a_one_image_signed_bundle(podman, src_registry, repo_name, rng,
                                                     tmp_path):
    """One image and its signature and SBOM: the image alone is named in index.json."""
    s = seed_both(src_registry, repo_name, rng)
    bundle = pull(tmp_path, "one.tar", s.signed)
    podman.cli("load", "-i", bundle)
    got = podman.image(s.signed)
    assert "sha256:" + got["Id"] == s.imgs[0].config.digest


def test_ctr_export_loads_back_with_the_source_digests(containerd, src_registry, dst_registry,
                                                       repo_name, rng, tmp_path):
    """Import, `ctr images export --all-platforms`, `mirror load` into the real registry: the
    index, its platform manifests and configs keep the source digests."""
    s = seed_both(src_registry, repo_name, rng)
    containerd.import_(pull(tmp_path, "b.tar", s.signed), "--all-platforms")
    out = tmp_path / "ctr-export.tar"
    containerd.ctr("images", "export", "--all-platforms", out, s.signed)
    mirror_ok("load", out, "--to", f"{dst_registry.host}/back")
    body, _, _ = get_manifest(dst_registry.url, f"back/{repo_name}", "1.0")
    assert ig.sha256_digest(body) == s.index.digest
    for img in s.imgs:
        got, _, _ = get_manifest(dst_registry.url, f"back/{repo_name}", img.digest)
        assert got == img.manifest.data


def test_podman_save_loads_back_with_the_source_config(podman, src_registry, dst_registry,
                                                       repo_name, rng, tmp_path):
    """`podman save --format oci-archive` of a loaded OCI image, then `mirror load`: the
    image at the target has the source config (its image ID). Podman itself compresses the
    layers again on save (new layer and manifest digests, as it says)."""
    s = seed_both(src_registry, repo_name, rng)
    podman.cli("load", "-i", pull(tmp_path, "b.tar", s.signed))
    out = tmp_path / "podman-save.tar"
    podman.cli("save", "--format", "oci-archive", "-o", out, s.signed)
    mirror_ok("load", out, "--to", f"{dst_registry.host}/back")
    body, _, _ = get_manifest(dst_registry.url, f"back/{repo_name}", "1.0")
    doc = json.loads(body)
    assert doc["config"]["digest"] == s.imgs[0].config.digest  # so the same diff_ids


def test_docker_save_loads_back_with_the_source_config(dockerd, src_registry, dst_registry,
                                                       repo_name, rng, tmp_path):
    """`docker save` (20.10: manifest.json, `<id>/layer.tar`, uncompressed, no index.json)
    of two images sharing a layer, then `mirror load`: each at the target under its tag
    with the source config; its layers are the uncompressed tars (digest = diff_id), so the
    manifest is a new one, which the load reports as a conversion."""
    shared = ig.make_layer(rng)
    a = ig.make_image(rng, ig.AMD64, fmt="docker", layers=[shared, ig.make_layer(rng)])
    b = ig.make_image(rng, ig.AMD64, fmt="docker", layers=[shared, shared])
    push_image(src_registry.url, repo_name, a, tags=["a"])
    push_image(src_registry.url, repo_name, b, tags=["b"])
    refs = [f"{src_registry.host}/{repo_name}:{t}" for t in ("a", "b")]
    dockerd.cli("load", "-i", pull(tmp_path, "b.tar", *refs))
    out = tmp_path / "docker-save.tar"
    dockerd.cli("save", "-o", out, *refs)
    proc = mirror_ok("load", out, "--to", f"{dst_registry.host}/back")
    for tag, img in (("a", a), ("b", b)):
        body, _, _ = get_manifest(dst_registry.url, f"back/{repo_name}", tag)
        doc = json.loads(body)
        assert doc["config"]["digest"] == img.config.digest
        assert [la["digest"] for la in doc["layers"]] == [la.diff_id for la in img.layers]
        assert f"{ig.sha256_digest(body)}" in proc.stderr + proc.stdout
    assert "docker-archive" in proc.stderr + proc.stdout
    mirror_ok("verify", out)
    shown = json.loads(mirror_ok("inspect", out, "--json").stdout)
    assert sorted(d["manifests"][0]["config"]["digest"] if "manifests" in d else
                  d["config"]["digest"] for d in shown) == sorted([a.config.digest,
                                                                   b.config.digest])
    # a layer changed in the archive no longer hashes to its diff_id: verify says which
    with tarfile.open(out) as tf:
        member = next(ti for ti in tf if ti.name.endswith("/layer.tar") and ti.isreg())
    with open(out, "r+b") as f:
        f.seek(member.offset_data + member.size - 2048)  # inside the layer's file data
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = run_mirror("verify", out)
    assert bad.returncode == 7, bad.stderr
    assert member.name in bad.stderr + bad.stdout


def test_podman_save_docker_archive_loads_back(podman, src_registry, dst_registry, repo_name,
                                              rng, tmp_path):
    """`podman save --format docker-archive --multi-image-archive`, then `mirror load`."""
    s = seed_both(src_registry, repo_name, rng)
    podman.cli("load", "-i", pull(tmp_path, "b.tar", s.signed, s.single))
    out = tmp_path / "podman-save.tar"
    podman.cli("save", "--format", "docker-archive", "--multi-image-archive", "-o", out,
               s.signed, s.single)
    mirror_ok("load", out, "--to", f"{dst_registry.host}/back")
    for repo, tag, img in ((repo_name, "1.0", s.imgs[0]),
                           (repo_name + "-single", "2", s.single_img)):
        body, _, _ = get_manifest(dst_registry.url, f"back/{repo}", tag)
        doc = json.loads(body)
        assert doc["config"]["digest"] == img.config.digest
        assert [la["digest"] for la in doc["layers"]] == [la.diff_id for la in img.layers]


def test_a_one_platform_ctr_export_is_explained(containerd, src_registry, dst_registry,
                                                repo_name, rng, tmp_path):
    """`ctr images export` without --all-platforms writes the index and the host's platform
    only: load says which platforms the archive holds, which it lacks, and what to do."""
    s = seed_both(src_registry, repo_name, rng)
    containerd.import_(pull(tmp_path, "b.tar", s.signed), "--all-platforms")
    out = tmp_path / "ctr-export.tar"
    containerd.ctr("images", "export", out, s.signed)
    proc = run_mirror("load", out, "--to", f"{dst_registry.host}/back")
    assert proc.returncode == 10, proc.stderr
    line = proc.stderr
    assert "holds linux/amd64 only" in line and "linux/arm64" in line, line
    assert "--all-platforms" in line, line
    assert s.index.digest in line, line
    for cmd in ("verify", "inspect"):  # the same words, the hint too
        proc = run_mirror(cmd, out)
        assert proc.returncode == 10, proc.stderr
        said = proc.stdout + proc.stderr
        assert "holds linux/amd64 only" in said and "--all-platforms" in said, (cmd, said)


def test_skopeo_docker_archive_loads_back(src_registry, dst_registry, repo_name, rng,
                                          tmp_path):
    """skopeo's `docker-archive:` (from the registry), then `mirror load` and `inspect`."""
    s = seed_both(src_registry, repo_name, rng)
    out = tmp_path / "skopeo.tar"
    skopeo("copy", "--src-tls-verify=false", f"docker://{s.single}",
           f"docker-archive:{out}:{s.single}")
    mirror_ok("verify", out)
    mirror_ok("load", out, "--to", f"{dst_registry.host}/back")
    body, _, _ = get_manifest(dst_registry.url, f"back/{repo_name}-single", "2")
    doc = json.loads(body)
    assert doc["config"]["digest"] == s.single_img.config.digest
    assert [la["digest"] for la in doc["layers"]] == [la.diff_id for la in s.single_img.layers]


def test_a_tar_zst_bundle_reaches_ctr_and_docker_through_zstd(containerd, dockerd,
                                                              src_registry, repo_name, rng,
                                                              tmp_path):
    """ctr 1.6 reads no zstd: `zstd -dc B.tar.zst | ctr images import -` (README), and the
    same pipe into `docker load`."""
    s = seed_both(src_registry, repo_name, rng)
    bundle = pull(tmp_path, "b.tar.zst", s.signed)
    for cmd in ([CTR, "--address", containerd.sock, "images", "import", "--snapshotter",
                 "native", "-"], [DOCKER, "-H", f"unix://{dockerd.sock}", "load"]):
        with subprocess.Popen(["zstd", "-dc", bundle], stdout=subprocess.PIPE) as z:
            proc = subprocess.run([str(c) for c in cmd], stdin=z.stdout, capture_output=True,
                                  text=True, timeout=300)
        assert proc.returncode == 0 and z.returncode == 0, proc.stderr
    assert containerd.images()[s.signed]["digest"] == s.index.digest
    assert dockerd.image(s.signed)["Id"] == s.imgs[0].config.digest


def test_podman_load_opens_a_foreign_platform_bundle(podman, src_registry, repo_name, rng,
                                                     tmp_path):
    """An arm64-only bundle on this amd64 host: the OCI path finds no amd64 image in the
    index, manifest.json serves (podman tries it next): the arm64 image, its ID the config."""
    s = seed_both(src_registry, repo_name, rng)
    podman.cli("load", "-i", pull(tmp_path, "arm.tar", s.signed, "--platform", "linux/arm64"))
    got = podman.image(s.signed)
    assert ("sha256:" + got["Id"], got["Architecture"]) == (s.imgs[1].config.digest, "arm64")


def incremental(reg: Registry, repo: str, rng, tmp_path: Path, base_name: str, *,
                c_shares: bool) -> tuple[dict[str, str], list[ig.Image], Path, Path, list[str]]:
    """Images a, b, c (b shares a layer with a; c too with `c_shares`), a base bundle of a
    (`base_name`) and inc.tar of b and c on it: their references, the images, the two
    bundles and the lines of the pull's output about manifest.json."""
    shared = ig.make_layer(rng)
    imgs = [ig.make_image(rng, ig.AMD64, layers=[shared, ig.make_layer(rng)]) for _ in "ab"]
    imgs.append(ig.make_image(rng, ig.AMD64, layers=[shared] if c_shares else None))
    for tag, img in zip("abc", imgs, strict=True):
        push_image(reg.url, repo, img, tags=[tag])
    ref = {t: f"{reg.host}/{repo}:{t}" for t in "abc"}
    base = pull(tmp_path, base_name, ref["a"])
    inc = tmp_path / "inc.tar"
    proc = mirror_ok("pull", ref["b"], ref["c"], "--base", base, "-o", inc, "--cache",
                     tmp_path / "cache")
    return ref, imgs, base, inc, [ln for ln in proc.stderr.splitlines() if "manifest.json" in ln]


def test_an_incremental_bundle_in_the_runtimes(containerd, dockerd, src_registry, repo_name,
                                               rng, tmp_path):
    """`--base`: an image whose layers the base bundle carried is left out of manifest.json
    (docker load and podman load cannot take it), and pull says so, naming it; ctr import
    unpacks it once the base went in first (the order incremental bundles are loaded in)."""
    ref, (_, b, _), base, inc, notes = incremental(src_registry, repo_name, rng, tmp_path,
                                                   "base.tar", c_shares=False)
    assert len(notes) == 1 and ref["b"] in notes[0], notes
    assert "docker load" in notes[0] and "base" in notes[0], notes
    containerd.import_(base)
    containerd.import_(inc)  # the shared layer is in containerd's content store: no error
    assert containerd.images()[ref["b"]]["digest"] == b.digest
    dockerd.cli("load", "-i", base)
    out = dockerd.cli("load", "-i", inc).stdout
    assert ref["c"] in out and ref["b"] not in out, out


def test_docker_and_podman_load_nothing_of_an_incremental_bundle_and_exit_0(
        dockerd, podman, src_registry, repo_name, rng, tmp_path):
    """An incremental bundle whose every image uses a blob of its base (a shared base layer:
    the usual case) has manifest.json `[]`: docker load and podman load exit 0 and load
    nothing, the base loaded or not, and skopeo's oci-archive: fails on the first blob the
    base carried (`no such file or directory`). pull says so in one line, not one per image
    (operator pass o19, D3, D4); podman load reads the base's .tar.zst as it is (D9)."""
    ref, (a, _, _), base, inc, notes = incremental(src_registry, repo_name, rng, tmp_path,
                                                   "base.tar.zst", c_shares=True)
    assert len(notes) == 1, notes
    assert "incremental bundle: manifest.json lists none of its 2 image(s)" in notes[0], notes
    assert "exit 0" in notes[0] and "mirror load" in notes[0], notes
    with tarfile.open(inc) as tf:
        assert tf.extractfile("manifest.json").read() == b"[]\n"
    podman.cli("load", "-i", base)  # a .tar.zst as it is, no zstd -dc
    assert podman.image(ref["a"])["Id"] == a.config.digest.split(":")[1]
    for runtime in (dockerd, podman):  # docker without the base, podman with it
        loaded = runtime.cli("load", "-i", inc, check=False)
        assert loaded.returncode == 0, loaded.stderr
        listed = runtime.cli("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
        assert ref["b"] not in listed and ref["c"] not in listed, listed
    copied = run(["skopeo", "copy", f"oci-archive:{inc}:{ref['b']}", f"dir:{tmp_path / 'd'}"])
    assert copied.returncode != 0 and "no such file or directory" in copied.stderr, \
        copied.stderr


def test_ctr_import_unpacks_the_images_after_one_it_cannot(containerd, registry_factory,
                                                           repo_name, rng, tmp_path):
    """ctr import stops at the first image it cannot unpack (here a skipped foreign layer) and
    leaves the images after it in index.json packed: the bundle lists those it can first."""
    src = registry_factory(urls_allow=ALLOW_LOOPBACK)
    fi = make_foreign(rng, ["http://127.0.0.1:9/layer"])
    push_foreign(src, f"{repo_name}/a-foreign", fi, with_blob=False)
    img = ig.make_image(rng, ig.AMD64)
    push_image(src.url, f"{repo_name}/b-plain", img, tags=["1"])
    foreign, plain = f"{src.host}/{repo_name}/a-foreign:v1", f"{src.host}/{repo_name}/b-plain:1"
    bundle = tmp_path / "b.tar"
    proc = mirror_ok("pull", foreign, plain, "-o", bundle, "--cache", tmp_path / "cache")
    assert f"{foreign}: not in manifest.json" in proc.stderr, proc.stderr
    assert "foreign layer" in proc.stderr, proc.stderr
    out = containerd.import_(bundle, check=False).stdout
    assert f"unpacking {plain} ({img.digest})...done" in out, out


def test_inspect_of_a_docker_save_by_image_id_says_what_it_holds(dockerd, src_registry,
                                                                 repo_name, rng, tmp_path):
    """`docker save IMAGE-ID` writes an image without RepoTags: load leaves it out with a note,
    and inspect, which printed nothing at all, says the same; a tagged image's new manifest
    (made from the archive) is noted too."""
    s = seed_both(src_registry, repo_name, rng)
    dockerd.cli("load", "-i", pull(tmp_path, "b.tar", s.single))
    out = tmp_path / "by-id.tar"
    dockerd.cli("save", "-o", out, s.single_img.config.digest)
    proc = mirror_ok("inspect", out)
    assert s.single_img.config.digest in proc.stderr and "no tag" in proc.stderr, proc.stderr
    tagged = tmp_path / "tagged.tar"
    dockerd.cli("save", "-o", tagged, s.single)
    proc = mirror_ok("inspect", tagged)
    assert "docker-archive: new manifest" in proc.stderr, proc.stderr


def test_a_sparse_index_is_named_as_what_ctr_cannot_import(containerd, src_registry,
                                                            repo_name, rng, tmp_path):
    """`--index sparse` keeps the source index, whose other platforms' manifests the bundle
    does not carry: on this amd64 host, of an arm64-only index, ctr import imports nothing
    from the file, not even the other images. pull says so, naming the image and --index
    filter."""
    s = seed_both(src_registry, repo_name, rng)
    cfg = tmp_path / "images.yaml"
    cfg.write_text(json.dumps({"version": 1, "images": [
        {"repository": s.signed.rsplit(":", 1)[0], "tags": ["1.0"], "index": "sparse",
         "platforms": ["linux/arm64"]}, s.single]}))
    bundle = tmp_path / "b.tar"
    proc = mirror_ok("pull", "-f", cfg, "-o", bundle, "--cache", tmp_path / "cache")
    assert f"{s.signed}: --index sparse" in proc.stderr, proc.stderr
    assert "ctr import" in proc.stderr and "--index filter" in proc.stderr, proc.stderr
    imported = containerd.import_(bundle, check=False)
    assert imported.returncode != 0 and s.single not in containerd.images(), imported.stdout


def test_ctr_imports_a_sparse_index_for_a_platform_it_carries(containerd, src_registry,
                                                              repo_name, rng, tmp_path):
    """A sparse index that carries the host's platform (amd64; arm64 left out): ctr import
    unpacks it, its digest the source index's; `--all-platforms` fails on the platform left
    out. pull's note said ctr imported nothing from such a file (the sinks matrix found
    otherwise); it names the platforms left out and the imports that fail."""
    s = seed_both(src_registry, repo_name, rng)
    bundle = tmp_path / "b.tar"
    proc = mirror_ok("pull", s.signed, s.single, "--platform", "linux/amd64", "--index",
                     "sparse", "-o", bundle, "--cache", tmp_path / "cache")
    (note,) = [ln for ln in proc.stderr.splitlines() if "--index sparse:" in ln]
    assert s.signed in note and "(linux/arm64)" in note, note
    assert "ctr import --all-platforms, or ctr import on a host of such a platform" in note, note
    every = containerd.import_(bundle, "--all-platforms", check=False)
    assert every.returncode != 0 and "not found" in every.stderr, every.stderr
    containerd.import_(bundle)
    images = containerd.images()
    assert images[s.signed]["digest"] == s.index.digest  # the source index, kept sparse
    assert images[s.single]["digest"] == s.single_img.digest


def test_docker_load_is_not_stopped_by_a_zstd_image(dockerd, src_registry, repo_name, rng,
                                                    tmp_path):
    """Docker 20.10 cannot read zstd layers: an image with one in manifest.json made docker
    load fail (`invalid tar header`) and load nothing, not even the other images. It is left
    out of manifest.json, and pull says so; the other images load."""
    import zstandard

    raw = ig.make_layer(rng, compressed=False)
    z = ig.Layer(zstandard.ZstdCompressor().compress(raw.data), "application/vnd.oci.image."
                 "layer.v1.tar+zstd", raw.diff_id)
    zimg = ig.make_image(rng, ig.AMD64, layers=[z, ig.make_layer(rng)])
    body = json.loads(zimg.manifest.data)
    body["layers"][0]["mediaType"] = z.media_type
    zimg.manifest = ig.Blob(ig.dump_json(body), ig.OCI_MANIFEST)
    push_image(src_registry.url, repo_name + "-z", zimg, tags=["1"])
    plain = ig.make_image(rng, ig.AMD64)
    push_image(src_registry.url, repo_name, plain, tags=["1"])
    zref, ref = f"{src_registry.host}/{repo_name}-z:1", f"{src_registry.host}/{repo_name}:1"
    bundle = tmp_path / "b.tar"
    proc = mirror_ok("pull", zref, ref, "-o", bundle, "--cache", tmp_path / "cache")
    assert f"{zref}: not in manifest.json" in proc.stderr and "zstd" in proc.stderr, \
        proc.stderr
    out = dockerd.cli("load", "-i", bundle).stdout
    assert f"Loaded image: {ref}" in out, out
    assert dockerd.image(ref)["Id"] == plain.config.digest
